-- wrk request mixes for the registry benchmark (bench/registry/run.sh).
--
--   wrk -t2 -c64 -d10s -s load.lua URL -- ACTION API COUNT APPS [ENCODING [OFFSET]]
--
-- ACTION: renew    PUT a heartbeat, cycling over the COUNT seeded instances
--         register POST a fresh instance each time
--         fetch    GET the whole registry
--         get      GET the URL's own path (e.g. /health)
-- API:    native (/v1/...) or eureka (/eureka/..., JSON)
-- ENCODING (fetch): plain (default) or gzip, which sends `Accept-Encoding: gzip` as
--         Eureka's own client does; wrk counts the compressed bytes and does not inflate.
-- OFFSET (renew): the first instance this process renews (default 0), so that several
--         wrk processes renewing at once do not move over the same leases in step.
-- The seeder names instance n `i-n` in app `BENCH-(n mod APPS)`; so does this script.
-- The bare hyper baseline answers `hello` to all of these, so the same script runs
-- against both servers.
--
-- done() prints one line `RESULT {json}` that run.sh records.

local threads = 0

function setup(thread)
  thread:set("thread_index", threads)
  threads = threads + 1
end

local action, api, count, apps, encoding, n

function init(args)
  action = args[1] or "renew"
  api = args[2] or "native"
  count = tonumber(args[3] or "10000")
  apps = tonumber(args[4] or "100")
  encoding = args[5] or "plain"
  -- Threads start far apart so they do not renew the same leases in step.
  n = (tonumber(args[6] or "0") + (thread_index or 0) * 7919) % count
end

local json_headers = { ["Content-Type"] = "application/json" }
local accept_json = { ["Accept"] = "application/json" }
local accept_json_gzip = { ["Accept"] = "application/json", ["Accept-Encoding"] = "gzip" }

local function renew()
  local app, id = "BENCH-" .. (n % apps), "i-" .. n
  n = (n + 1) % count
  if api == "eureka" then
    return wrk.format("PUT", "/eureka/apps/" .. app .. "/" .. id .. "?status=UP")
  end
  return wrk.format("PUT", "/v1/apps/" .. app .. "/" .. id .. "/heartbeat")
end

local fresh = 0

local function register()
  fresh = fresh + 1
  local id = "r" .. (thread_index or 0) .. "-" .. fresh
  local body = '{"instance_id":"' .. id .. '","host_name":"' .. id ..
    '.bench","port":8080,"lease_duration_secs":3600}'
  return wrk.format("POST", "/v1/apps/BENCH-" .. (fresh % apps), json_headers, body)
end

local function fetch()
  local headers = accept_json
  if encoding == "gzip" then
    headers = accept_json_gzip
  end
  if api == "eureka" then
    return wrk.format("GET", "/eureka/apps", headers)
  end
  return wrk.format("GET", "/v1/apps", headers)
end

function request()
  if action == "register" then
    return register()
  elseif action == "fetch" then
    return fetch()
  elseif action == "get" then
    return wrk.format("GET")
  end
  return renew()
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"non2xx":%d,"socket_errors":%d,"bytes":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout, summary.bytes))
end
