-- wrk script of the benchmark suite: `wrk ... -s request.lua URL -- METHOD BODY CONTENT_TYPE [TOKEN...]`.
-- Every argument is optional. With several tokens each request takes the next one, so the
-- load comes from several users (the API serializes one user's job intake); `@PATH` in
-- place of the tokens reads them from a file, one per line (thousands would not fit in
-- the arguments). done() prints one JSON line, prefixed BENCH_JSON, with the counts and
-- the latency percentiles (in us).

local method, body, content_type = "GET", nil, nil
local tokens = {}
local prepared = nil
local counter = 0

function init(args)
  method = args[1] or "GET"
  if args[2] ~= nil and args[2] ~= "" then body = args[2] end
  if args[3] ~= nil and args[3] ~= "" then content_type = args[3] end
  if args[4] ~= nil and string.sub(args[4], 1, 1) == "@" then
    for line in io.lines(string.sub(args[4], 2)) do
      if line ~= "" then tokens[#tokens + 1] = "Bearer " .. line end
    end
  else
    for i = 4, #args do tokens[#tokens + 1] = "Bearer " .. args[i] end
  end
  if #tokens <= 1 then
    -- One request for every call: formatting it once keeps the generator cheap.
    prepared = wrk.format(method, nil, headers_for(1), body)
  end
end

function headers_for(n)
  local headers = {}
  if content_type ~= nil then headers["Content-Type"] = content_type end
  if #tokens > 0 then headers["Authorization"] = tokens[n] end
  return headers
end

function request()
  if prepared ~= nil then return prepared end
  counter = counter + 1
  return wrk.format(method, nil, headers_for(counter % #tokens + 1), body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99.9":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    p(50), p(75), p(90), p(99), p(99.9)))
end
