-- Workload "read": GET [base]/Patient/{id} over the seeded ids, round-robin.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

function bench.init_workload(state)
   state.ids = bench.load_ids()
end

function bench.next_request(state)
   local id = state.ids[(state.counter - 1) % #state.ids + 1]
   return wrk.format("GET", state.base .. "/Patient/" .. id, state.get_headers)
end

bench.install()
