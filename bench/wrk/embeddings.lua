-- wrk script for `make bench`: POST one short input to /v1/embeddings, then print the summary as one JSON line.
--
-- Environment: BENCH_KEY (see report.lua), BENCH_BODY (the JSON body). The default is one short string, the
-- smallest request of the endpoint, so the figure is the gateway's per-request cost rather than payload size;
-- `encoding_format: base64` because that is what the openai SDKs ask for unless told otherwise (the vector
-- comes back as 8 KiB of base64 rather than about 30 KiB of JSON floats).

-- report.lua sits next to this script; wrk gives no script directory, but the chunk's source is "@<path>".
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.-)[^/]*$") .. "report.lua")

wrk.body = os.getenv("BENCH_BODY")
  or '{"model":"text-embedding-3-small","input":"Say hello to the benchmark","encoding_format":"base64"}'
