-- wrk script for `make bench`: POST one short input to /v1/responses (plain, `store: false` as Codex sends it),
-- then print the summary as one JSON line. Environment: BENCH_KEY (see report.lua), BENCH_BODY (the JSON body).

-- report.lua sits next to this script; wrk gives no script directory, but the chunk's source is "@<path>".
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.-)[^/]*$") .. "report.lua")

wrk.body = os.getenv("BENCH_BODY") or '{"model":"gpt-4o-mini","input":"Say hello to the benchmark","store":false}'
