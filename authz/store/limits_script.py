"""The Redis side of ``algorithm.py``: one Lua script checks and updates every limit of a
request atomically, in one round trip, with the Redis server's clock (``TIME``)."""

# KEYS: rate keys, then budget keys.
# ARGV: n_rates, n_budgets, then per rate: interval_us, burst, cost; per budget: limit, amount, ttl_s;
#       last, the deadline: the Redis TIME (µs) after which the call must change nothing, because
#       the sidecar has given up waiting for it (0: none).
# Returns {allowed, now_us, then per rate: allowed, remaining, reset_us, retry_us;
#          per budget: allowed, used, remaining} as strings (Lua numbers are doubles; Redis would
#          truncate non-integers in replies); allowed is 2 and nothing else follows when the
#          deadline had passed (a call Redis ran late, after a pause or a backlog: never applied).
LIMITS_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deadline = tonumber(ARGV[#ARGV])
if deadline > 0 and now > deadline then return {'2', string.format('%d', now)} end
local nr = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
local all = true
local out = {}
local new_tats = {}
local a = 3
for i = 1, nr do
  local T = tonumber(ARGV[a]); local burst = tonumber(ARGV[a + 1]); local cost = tonumber(ARGV[a + 2])
  a = a + 3
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  local new_tat = tat + T * cost
  local allow_at = new_tat - T * burst
  if allow_at <= now then
    new_tats[i] = new_tat
    table.insert(out, '1')
    table.insert(out, tostring(math.floor((now - allow_at) / T)))
    table.insert(out, string.format('%d', math.ceil(new_tat - now)))
    table.insert(out, '0')
  else
    all = false
    table.insert(out, '0')
    table.insert(out, '0')
    table.insert(out, string.format('%d', math.ceil(tat - now)))
    table.insert(out, string.format('%d', math.ceil(allow_at - now)))
  end
end
local budget = {}
for j = 1, nb do
  local limit = tonumber(ARGV[a]); local amount = tonumber(ARGV[a + 1]); local ttl = tonumber(ARGV[a + 2])
  a = a + 3
  local key = KEYS[nr + j]
  local used = tonumber(redis.call('GET', key) or '0')
  if used + amount > limit then
    all = false
    local rem = limit - used
    if rem < 0 then rem = 0 end
    table.insert(out, '0')
    table.insert(out, string.format('%d', used))
    table.insert(out, string.format('%d', rem))
  else
    budget[j] = {key, amount, ttl}
    table.insert(out, '1'); table.insert(out, string.format('%d', used + amount))
    table.insert(out, string.format('%d', limit - used - amount))
  end
end
if all then
  for i = 1, nr do
    local ttl_ms = math.ceil((new_tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.3f', new_tats[i]), 'PX', ttl_ms)
  end
  for j = 1, nb do
    local b = budget[j]
    redis.call('INCRBY', b[1], b[2])
    if redis.call('PTTL', b[1]) < 0 then redis.call('EXPIRE', b[1], b[3]) end
  end
end
table.insert(out, 1, string.format('%d', now))
table.insert(out, 1, all and '1' or '0')
return out
"""

# Undo what one successful LIMITS_LUA call took: each rate key's TAT moves back by interval * cost
# (a bucket that is full again is deleted), each budget gives its amount back. KEYS as in
# LIMITS_LUA; ARGV: n_rates, n_budgets, then per rate: interval_us * cost; per budget: amount.
UNDO_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nr = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
for i = 1, nr do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat ~= nil then
    local new_tat = tat - tonumber(ARGV[2 + i])
    if new_tat <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
    end
  end
end
for j = 1, nb do
  local key = KEYS[nr + j]
  if redis.call('EXISTS', key) == 1 then redis.call('DECRBY', key, ARGV[2 + nr + j]) end
end
return 1
"""
