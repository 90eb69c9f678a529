-- pipeline16.lua: a wrk script that pipelines 16 requests per connection.
--
--   wrk -t2 -c64 -d5s -s bench/pipeline16.lua http://127.0.0.1:PORT/
--
-- Every write wrk makes carries 16 GET requests for the URL's path, back to
-- back; wrk sends the next 16 once all 16 responses are in. wrk counts the
-- requests in the string once, at start-up, and from then on counts each
-- response it parses, so "requests" and "Requests/sec" are HTTP requests,
-- not batches (`./run bench-echo` checks this against the server's own
-- count). Latency is per batch.

local depth = 16
local batch

function init(args)
  local one = wrk.format(nil, nil) -- wrk's method and the URL's path
  batch = string.rep(one, depth)
end

function request()
  return batch
end
