-- Workload "update": PUT [base]/Patient/{id} over this thread's share of the seeded ids,
-- each body different from the previous version (so the server has a real change to store).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

function bench.init_workload(state)
   state.ids = bench.load_ids()
end

function bench.next_request(state)
   local n = state.counter
   local id = state.ids[(n - 1) % #state.ids + 1]
   local body = string.format(
      '{"resourceType":"Patient","id":"%s","active":true,' ..
      '"identifier":[{"system":"urn:hygie:bench:seed","value":"%s"}],' ..
      '"name":[{"family":"Bench","given":["Update","T%dN%d"]}],' ..
      '"telecom":[{"system":"phone","value":"+33 1 %02d %02d %02d %02d","use":"home"}],' ..
      '"gender":"unknown","birthDate":"1970-01-01"}',
      id, id, state.thread, n, n % 100, math.floor(n / 100) % 100, state.thread % 100, n % 97)
   return wrk.format("PUT", state.base .. "/Patient/" .. id, state.json_headers, body)
end

bench.install()
