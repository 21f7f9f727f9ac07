-- Shared by the workload scripts (read, create, update, transaction).
--
-- Each workload script does `local bench = dofile(<this dir> .. "common.lua")`, defines
-- `bench.next_request(state)` returning one formatted HTTP request, and calls
-- `bench.install()`. This file then supplies wrk's hooks:
--   setup(thread)  main state: numbers the threads so each works on its own share of ids
--   init(args)     thread state: loads the seeded ids, builds the request headers
--   request()      one request from the workload
--   response(...)  counts non-2xx responses and keeps the first one for the report
--   done(...)      main state: prints one `BENCH_RESULT {json}` line for bench/http/run
--
-- Environment (set by bench/http/run):
--   BENCH_WORKLOAD  the workload's name, reported as is
--   BENCH_IDS_FILE  seeded Patient ids, one a line (read and update)
--   BENCH_THREADS   wrk's -t, so each thread can take every BENCH_THREADS-th id
--   BENCH_RUN_ID    distinguishes this run's created resources from earlier runs'

local bench = {}

local FHIR_JSON = "application/fhir+json"
local ERROR_BODY_CHARS_MAX = 300 -- enough to read an OperationOutcome's diagnostics

local threads = {}   -- main state: every thread, for done()
local thread_count = 0

-- Main state ---------------------------------------------------------------------------

function bench.setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_index", thread_count) -- 1-based
   table.insert(threads, thread)
end

local function json_string(s)
   s = tostring(s or "")
   s = s:gsub('[%c"\\]', function(c)
      if c == '"' then return '\\"' end
      if c == "\\" then return "\\\\" end
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function bench.done(summary, latency, requests)
   local non2xx, first_error = 0, ""
   for _, thread in ipairs(threads) do
      non2xx = non2xx + (thread:get("non2xx") or 0)
      local e = thread:get("first_error")
      if first_error == "" and e and e ~= "" then first_error = e end
   end
   local duration_s = summary.duration / 1e6
   local errors = summary.errors
   local function ms(us) return string.format("%.3f", us / 1000) end
   io.write("BENCH_RESULT {",
      '"workload":', json_string(os.getenv("BENCH_WORKLOAD") or "?"), ",",
      '"requests":', summary.requests, ",",
      '"duration_s":', string.format("%.3f", duration_s), ",",
      '"requests_per_s":', string.format("%.1f", summary.requests / duration_s), ",",
      '"latency_ms":{',
         '"p50":', ms(latency:percentile(50)), ",",
         '"p90":', ms(latency:percentile(90)), ",",
         '"p99":', ms(latency:percentile(99)), ",",
         '"max":', ms(latency.max), ",",
         '"mean":', ms(latency.mean), "},",
      '"non_2xx":', non2xx, ",",
      '"socket_errors":{',
         '"connect":', errors.connect, ",",
         '"read":', errors.read, ",",
         '"write":', errors.write, ",",
         '"timeout":', errors.timeout, "},",
      '"first_non_2xx":', json_string(first_error),
      "}\n")
end

-- Thread state -------------------------------------------------------------------------

bench.state = { counter = 0 }

function bench.headers(extra)
   -- wrk.format(method, path, headers, body) ignores wrk.headers (the -H options) when
   -- given a table, so start from a copy of them.
   local h = {}
   for k, v in pairs(wrk.headers) do h[k] = v end
   h["Accept"] = FHIR_JSON
   for k, v in pairs(extra or {}) do h[k] = v end
   return h
end

-- The FHIR base path from the URL given to wrk, without a trailing slash ("" for "/").
function bench.base_path()
   return (wrk.path or "/"):gsub("/+$", "")
end

function bench.load_ids()
   local path = os.getenv("BENCH_IDS_FILE")
   assert(path and path ~= "", "BENCH_IDS_FILE is not set")
   local ids = {}
   for line in io.lines(path) do
      if line ~= "" then table.insert(ids, line) end
   end
   assert(#ids > 0, "no ids in " .. path)
   -- This thread's share: ids thread_index, thread_index + T, ... so that two threads never
   -- update the same resource at once.
   local t = tonumber(os.getenv("BENCH_THREADS") or "1")
   local mine = {}
   for i = thread_index, #ids, t do table.insert(mine, ids[i]) end
   if #mine == 0 then mine = ids end
   return mine
end

function bench.init(args)
   thread_index = thread_index or 1
   non2xx = 0
   first_error = ""
   bench.state.thread = thread_index
   bench.state.run_id = os.getenv("BENCH_RUN_ID") or tostring(os.time())
   bench.state.json_headers = bench.headers({ ["Content-Type"] = FHIR_JSON })
   bench.state.get_headers = bench.headers()
   bench.state.base = bench.base_path()
   math.randomseed(os.time() * 1000 + thread_index)
   if bench.init_workload then bench.init_workload(bench.state) end
end

function bench.response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_error == "" then
         first_error = "HTTP " .. status .. ": " .. string.sub(body or "", 1, ERROR_BODY_CHARS_MAX)
      end
   end
end

function bench.install()
   setup = bench.setup
   init = bench.init
   request = function()
      bench.state.counter = bench.state.counter + 1
      return bench.next_request(bench.state)
   end
   response = bench.response
   done = bench.done
end

return bench
