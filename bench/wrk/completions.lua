-- wrk script for `make bench`: POST a small legacy completion (/v1/completions, a `prompt` rather than
-- `messages`), then print the summary as one JSON line.
--
-- Environment: BENCH_KEY (see report.lua), BENCH_BODY (the JSON body; a one-line prompt by default, with
-- `max_tokens` so the limiter and the budget see the same bounded worst case as a typical client's request).

-- report.lua sits next to this script; wrk gives no script directory, but the chunk's source is "@<path>".
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.-)[^/]*$") .. "report.lua")

wrk.body = os.getenv("BENCH_BODY")
  or '{"model":"gpt-3.5-turbo-instruct","prompt":"Say hello to the benchmark","max_tokens":16}'
