-- Workload "read": GET [base]/Patient/{id} over the seeded ids, round-robin.
-- BENCH_READ_TYPE names another type (the ids file then holds ids of that type).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

function bench.init_workload(state)
   state.ids = bench.load_ids()
end

local read_type = os.getenv("BENCH_READ_TYPE") or "Patient"

function bench.next_request(state)
   local id = state.ids[(state.counter - 1) % #state.ids + 1]
   return wrk.format("GET", state.base .. "/" .. read_type .. "/" .. id, state.get_headers)
end

bench.install()
