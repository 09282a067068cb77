-- wrk script for bench/serve.py: POST real JPEG files as multipart uploads, closed loop.
--
-- bench/serve.py writes the complete multipart bodies as files (body-0000.bin, ...) and passes
--   WRK_BODIES_DIR  the folder holding them
--   WRK_BODIES      how many there are
--   WRK_BOUNDARY    the multipart boundary they use
--   WRK_HEADERS     instead of a multipart Content-Type: the request headers, "Name: value" joined by "|"
--                   (the Open Inference Protocol's binary bodies: Inference-Header-Content-Length)
--   WRK_REPORT      where done() writes the figures as JSON
-- Requests are formatted once in init(), so the generator only copies bytes per request: it
-- shares the 2 cores with the server and must stay cheap. response() counts statuses, so a 503
-- from back-pressure is told apart from a real error.

local bodies_dir = os.getenv("WRK_BODIES_DIR")
local body_count = tonumber(os.getenv("WRK_BODIES") or "0")
local boundary = os.getenv("WRK_BOUNDARY") or "cifar10-bench-boundary"
local report_path = os.getenv("WRK_REPORT")
local header_list = os.getenv("WRK_HEADERS")

local requests = {}
local next_request = 1
statuses = {}
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
  if header_list and header_list ~= "" then
    headers = {}
    for name, value in string.gmatch(header_list, "([^:|]+):%s*([^|]*)") do
      headers[name] = value
    end
  end
  for i = 0, body_count - 1 do
    local path = string.format("%s/body-%04d.bin", bodies_dir, i)
    local file = assert(io.open(path, "rb"))
    local body = file:read("*a")
    file:close()
    requests[#requests + 1] = wrk.format("POST", nil, headers, body)
  end
  -- Threads start at different files so they do not send the same image at the same moment.
  next_request = (id or 0) % #requests + 1
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests_stats)
  local counts = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for status, n in pairs(s) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local e = summary.errors
  local out = assert(io.open(report_path, "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"statuses": {%s}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ", "),
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
  out:close()
end
