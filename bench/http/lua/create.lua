-- Workload "create": POST [base]/Patient, every body distinct (thread, counter, run id).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

local GENDERS = { "female", "male", "other", "unknown" }

function bench.next_request(state)
   local n = state.counter
   local body = string.format(
      '{"resourceType":"Patient","active":true,' ..
      '"identifier":[{"system":"urn:hygie:bench:create","value":"%s-%d-%d"}],' ..
      '"name":[{"family":"Bench%d","given":["Create","T%dN%d"]}],' ..
      '"gender":"%s","birthDate":"%04d-%02d-%02d"}',
      state.run_id, state.thread, n,
      n % 1000, state.thread, n,
      GENDERS[n % #GENDERS + 1], 1930 + n % 90, n % 12 + 1, n % 28 + 1)
   return wrk.format("POST", state.base .. "/Patient", state.json_headers, body)
end

bench.install()
