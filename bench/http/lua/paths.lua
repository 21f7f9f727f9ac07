-- Workload "paths": GET [base]/<line> for each line of BENCH_PATHS_FILE (a path and query
-- relative to the FHIR base, e.g. "Patient?family=Bins636"), round-robin. Used by
-- bench/search/run for search workloads; works against any FHIR server.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

function bench.init_workload(state)
   local file = os.getenv("BENCH_PATHS_FILE")
   assert(file and file ~= "", "BENCH_PATHS_FILE is not set")
   state.paths = {}
   for line in io.lines(file) do
      if line ~= "" then table.insert(state.paths, line) end
   end
   assert(#state.paths > 0, "no paths in " .. file)
   -- Threads start at different places in the list.
   state.offset = (state.thread - 1) * 7919
end

function bench.next_request(state)
   local path = state.paths[(state.counter + state.offset - 1) % #state.paths + 1]
   return wrk.format("GET", state.base .. "/" .. path, state.get_headers)
end

bench.install()
