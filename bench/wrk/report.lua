-- Shared by the bench's wrk scripts (chat.lua, embeddings.lua, completions.lua), loaded with `dofile`: the
-- request headers every case sends, and the summary as one JSON line for bench/run.py.
--
-- Environment: BENCH_KEY (sent as `Authorization: Bearer …` when set). The last line of stdout is
-- `BENCH_JSON {...}`.
--
-- Latency percentiles are wrk's own, after its coordinated-omission correction: for every response slower
-- than twice the mean interval between requests on a connection, wrk adds the samples the stalled connection
-- would have produced. One long stall therefore shows up as many slow samples (this is what makes the p99
-- honest for a closed-loop client, and very sensitive to pauses).

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
  local e = summary.errors
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
      e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}',
      latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(75),
      latency:percentile(90), latency:percentile(99), latency:percentile(99.9)),
  }
  io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end
