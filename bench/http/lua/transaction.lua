-- Workload "transaction": POST [base] with a transaction Bundle of 10 entries:
-- 1 Patient (fullUrl urn:uuid:…) and 9 heart-rate Observations whose subject references it.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

local OBSERVATIONS_PER_BUNDLE = 9

-- A version-4-shaped UUID, unique per (run, thread, counter): random high bits, the thread
-- and counter in the low bits.
local function uuid(state, n)
   return string.format("%08x-%04x-4%03x-a%03x-%012x",
      math.random(0, 0x7fffffff), state.thread % 0x10000,
      math.random(0, 0xfff), math.random(0, 0xfff), n)
end

function bench.next_request(state)
   local n = state.counter
   local patient = "urn:uuid:" .. uuid(state, n * 16)
   local entries = {}
   entries[1] = string.format(
      '{"fullUrl":"%s","resource":{"resourceType":"Patient","active":true,' ..
      '"identifier":[{"system":"urn:hygie:bench:transaction","value":"%s-%d-%d"}],' ..
      '"name":[{"family":"Bench","given":["Transaction","T%dN%d"]}],"gender":"unknown"},' ..
      '"request":{"method":"POST","url":"Patient"}}',
      patient, state.run_id, state.thread, n, state.thread, n)
   for i = 1, OBSERVATIONS_PER_BUNDLE do
      entries[i + 1] = string.format(
         '{"fullUrl":"urn:uuid:%s","resource":{"resourceType":"Observation","status":"final",' ..
         '"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],' ..
         '"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},' ..
         '"subject":{"reference":"%s"},"effectiveDateTime":"2026-01-%02dT%02d:%02d:00Z",' ..
         '"valueQuantity":{"value":%d,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}},' ..
         '"request":{"method":"POST","url":"Observation"}}',
         uuid(state, n * 16 + i), patient, i, n % 24, n % 60, 50 + (n + i) % 70)
   end
   local body = '{"resourceType":"Bundle","type":"transaction","entry":[' ..
      table.concat(entries, ",") .. "]}"
   local path = state.base == "" and "/" or state.base
   return wrk.format("POST", path, state.json_headers, body)
end

bench.install()
