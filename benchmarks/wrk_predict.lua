-- Predict requests for wrk (`predict_throughput.py --client wrk`): each request POSTs one row
-- to /predict/{key}. The requests are read from the file named by the script's argument, one
-- per line (a key, a tab, a JSON body), formatted once, and sent in turn; each thread starts
-- at its own place in the list. done() prints one line the benchmark parses.

local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  requests = {}
  for line in io.lines(args[1]) do
    local key, body = line:match("^([^\t]+)\t(.*)$")
    requests[#requests + 1] = wrk.format(
      "POST", "/predict/" .. key, { ["Content-Type"] = "application/json" }, body
    )
  end
  position = (id * 7919) % #requests
end

function request()
  position = position % #requests + 1
  return requests[position]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "PSP_WRK requests=%d duration_us=%d non2xx=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99)
  ))
end
