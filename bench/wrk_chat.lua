-- wrk script for bench/overhead.py: POST a 16-token chat completion.
-- STREAM=1 asks for an SSE answer; BEARER=KEY adds an Authorization header.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bearer = os.getenv("BEARER")
if bearer and bearer ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. bearer
end
local stream = os.getenv("STREAM") == "1"
wrk.body = '{"model": "sim-llama", "max_tokens": 16, "stream": ' .. (stream and "true" or "false")
  .. ', "messages": [{"role": "user", "content": "Say sixteen words about load balancers."}]}'
