"""The Lua scripts behind the Redis broker's reliable fetch, and the keys they keep.

Each script runs atomically on the Redis server, so taking a message off its queue and
recording who holds it are one step: no moment exists in which the message is only in a
worker's memory (kombu's BRPOP-then-record leaves one). The same holds for a Redis crash:
an append-only file or a replica receives the script's effects as one unit.

Keys (after kombu's `global_keyprefix`, when one is set):

- `{queue}` (and kombu's priority lists `{queue}\\x06\\x16{n}`): the queues, as every
  producer writes them (LPUSH); a consumer takes from the right end.
- `_apiworker.holders`: sorted set, holder id -> the server time (ms) of its last
  heartbeat. A holder is one consuming channel of one worker process.
- `_apiworker.inhand.{holder}`: hash, one field per message the holder has taken and not
  acknowledged: `{taken-at ms}:{fetch}.{n}:{queue key}` -> the queue item, byte for byte.
- `_apiworker.sequence`: a counter that makes every in-hand field unique.
- `_apiworker.deliveries`: hash, sha1 of a queue item -> deliveries of it that ended with
  a dead holder; the entry goes when the message is acknowledged or parked.
- `{queue}.dead`: list of parked items (oldest first), as on RabbitMQ's `{queue}.dead`.
- `_apiworker.parked`: hash, sha1 of a parked item -> how many deliveries it had.

The scripts touch keys they compute (a holder's hash, a queue's dead list), so the
broker cannot be a Redis Cluster; kombu's Redis transport cannot either.
"""

from __future__ import annotations

HOLDERS = "_apiworker.holders"
INHAND_PREFIX = "_apiworker.inhand."
SEQUENCE = "_apiworker.sequence"
DELIVERIES = "_apiworker.deliveries"
PARKED_INFO = "_apiworker.parked"
DEAD_SUFFIX = ".dead"

# Shared by the scripts: the server's clock in ms (one clock for every holder), and the
# queue key inside an in-hand field.
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function queue_of(field)
  local _, _, queue = string.find(field, '^%d+:[%d.]+:(.*)$')
  return queue
end
"""

#: Heartbeat, then take up to ARGV[2] messages and record each as in hand, in one step;
#: ARGV[4..]: the admission's held upstreams (task prefix, queue key), see the script.
#: KEYS: holders, the holder's in-hand hash, sequence, then the queue keys, in priority
#: groups of ARGV[3] keys each (kombu's order: every queue at priority 0, then 3...).
#: Within a group the queues take turns, one message each, so a busy queue cannot starve
#: the others. Returns a flat list: field, key index (0-based), item, ...
FETCH = (
    _PRELUDE
    + """
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
local want = tonumber(ARGV[2])
local group = tonumber(ARGV[3])
local out = {}
local got = 0
local call = redis.call('INCR', KEYS[3])
-- Admission (the upstreams' budgets, `redis_transport.admission`): ARGV[4..] are pairs
-- of a task-name prefix whose upstream has no budget now and the queue key its jobs wait
-- in; a job of theirs met in another queue is moved to the head of that one, not taken.
local held = {}
for j = 4, #ARGV - 1, 2 do held[#held + 1] = {ARGV[j], ARGV[j + 1]} end
local moved = 0
local function held_in(item, key)
  if #held == 0 or moved >= 100 then return nil end
  local ok, envelope = pcall(cjson.decode, item)
  if not ok or type(envelope) ~= 'table' or type(envelope.headers) ~= 'table' then return nil end
  local task = envelope.headers.task
  if type(task) ~= 'string' then return nil end
  for _, rule in ipairs(held) do
    if rule[2] ~= key and string.sub(task, 1, #rule[1]) == rule[1] then return rule[2] end
  end
  return nil
end
local first = 4
while first <= #KEYS and got < want do
  local last = math.min(first + group - 1, #KEYS)
  local live = {}
  for i = first, last do live[#live + 1] = i end
  while #live > 0 and got < want do
    local still = {}
    for _, i in ipairs(live) do
      if got >= want then break end
      local item = redis.call('RPOP', KEYS[i])
      local wait_in = item and held_in(item, KEYS[i])
      if wait_in then
        redis.call('RPUSH', wait_in, item)
        moved = moved + 1
        still[#still + 1] = i
      elseif item then
        got = got + 1
        local field = now .. ':' .. call .. '.' .. got .. ':' .. KEYS[i]
        redis.call('HSET', KEYS[2], field, item)
        out[#out + 1] = field
        out[#out + 1] = i - 4
        out[#out + 1] = item
        still[#still + 1] = i
      end
    end
    live = still
  end
  first = last + 1
end
return out
"""
)

#: Acknowledge: forget the in-hand fields ARGV (and their delivery counts, if any).
#: KEYS: the holder's in-hand hash, deliveries.
ACK = """
if redis.call('HLEN', KEYS[2]) > 0 then
  for _, field in ipairs(ARGV) do
    local item = redis.call('HGET', KEYS[1], field)
    if item then redis.call('HDEL', KEYS[2], redis.sha1hex(item)) end
  end
end
return redis.call('HDEL', KEYS[1], unpack(ARGV))
"""

#: Hand back: put the in-hand fields ARGV at the head of their queues (taken next).
#: A field already gone (acknowledged, or rescued by another worker) is skipped, so a
#: message is never put back twice. KEYS: the holder's in-hand hash.
REQUEUE = (
    _PRELUDE
    + """
local back = 0
for _, field in ipairs(ARGV) do
  local item = redis.call('HGET', KEYS[1], field)
  if item then
    redis.call('RPUSH', queue_of(field), item)
    redis.call('HDEL', KEYS[1], field)
    back = back + 1
  end
end
return back
"""
)

#: Heartbeat (when ARGV[1] names a holder), then rescue the messages of up to 16 holders
#: whose heartbeat is older than ARGV[2] ms: each goes back to the head of its queue,
#: or, once more than ARGV[3] deliveries of it have ended with a dead holder (RabbitMQ's
#: `x-delivery-limit` counts the same way), to `{queue}.dead`.
#: KEYS: holders, deliveries, parked info. ARGV[4]: the in-hand key prefix (prefixed),
#: ARGV[5]: the dead-letter suffix. Returns {requeued count, then for each parked
#: message: its queue key, the item, its deliveries}.
RESCUE = (
    _PRELUDE
    + """
local now = now_ms()
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], now, ARGV[1]) end
local limit = tonumber(ARGV[3])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, 16)
local requeued = 0
local out = {0}
for _, holder in ipairs(dead) do
  local inhand = ARGV[4] .. holder
  local entries = redis.call('HGETALL', inhand)
  for i = 1, #entries, 2 do
    local queue = queue_of(entries[i])
    local item = entries[i + 1]
    local digest = redis.sha1hex(item)
    local count = redis.call('HINCRBY', KEYS[2], digest, 1)
    if count > limit then
      redis.call('RPUSH', queue .. ARGV[5], item)
      redis.call('HDEL', KEYS[2], digest)
      redis.call('HSET', KEYS[3], digest, count)
      out[#out + 1] = queue
      out[#out + 1] = item
      out[#out + 1] = count
    else
      redis.call('RPUSH', queue, item)
      requeued = requeued + 1
    end
  end
  redis.call('DEL', inhand)
  redis.call('ZREM', KEYS[1], holder)
end
out[1] = requeued
return out
"""
)

#: The visibility timeout, the backstop for a holder that is alive but stuck: put back
#: every in-hand message taken more than ARGV[1] ms ago. KEYS: holders. ARGV[2]: the
#: in-hand key prefix. Returns how many went back.
VISIBILITY = (
    _PRELUDE
    + """
local ceiling = now_ms() - tonumber(ARGV[1])
local back = 0
for _, holder in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local inhand = ARGV[2] .. holder
  for _, field in ipairs(redis.call('HKEYS', inhand)) do
    local taken = tonumber(string.match(field, '^(%d+):'))
    if taken and taken < ceiling then
      redis.call('RPUSH', queue_of(field), redis.call('HGET', inhand, field))
      redis.call('HDEL', inhand, field)
      back = back + 1
    end
  end
end
return back
"""
)

#: Leave: hand back everything the holder ARGV[1] still holds, and forget it.
#: KEYS: holders, the holder's in-hand hash. Returns how many went back.
RELEASE = (
    _PRELUDE
    + """
local back = 0
local fields = redis.call('HKEYS', KEYS[2])
for _, field in ipairs(fields) do
  redis.call('RPUSH', queue_of(field), redis.call('HGET', KEYS[2], field))
  back = back + 1
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return back
"""
)

#: Replay the oldest parked message of a queue: back to its queue's tail, as a new
#: publish would be, in the same step as it leaves the dead list (so it is never in
#: neither, nor in both). KEYS: the dead list, the queue, parked info. Returns the item.
REPLAY = """
local item = redis.call('LPOP', KEYS[1])
if item then
  redis.call('LPUSH', KEYS[2], item)
  redis.call('HDEL', KEYS[3], redis.sha1hex(item))
end
return item
"""
