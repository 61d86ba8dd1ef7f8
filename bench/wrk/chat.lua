-- wrk script for `make bench`: POST a small chat completion, then print the summary as one JSON line.
--
-- Environment: BENCH_KEY (see report.lua), BENCH_BODY (the JSON body; a small one-message chat by default).
-- The last line of stdout is `BENCH_JSON {...}`, read by bench/run.py.

-- report.lua sits next to this script; wrk gives no script directory, but the chunk's source is "@<path>".
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.-)[^/]*$") .. "report.lua")

wrk.body = os.getenv("BENCH_BODY")
  or '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark"}]}'
