"""The Lua scripts behind the Redis broker's reliable fetch, and the keys they keep.

Each script runs atomically on the Redis server, so taking a message off its queue and
recording who holds it are one step: no moment exists in which the message is only in a
worker's memory (kombu's BRPOP-then-record leaves one). The same holds for a Redis crash:
an append-only file or a replica receives the script's effects as one unit.

Keys (after kombu's `global_keyprefix`, when one is set):

- `{queue}` (and kombu's priority lists `{queue}\\x06\\x16{n}`): the queues, as every
  producer writes them (LPUSH); a consumer takes from the right end.
- `_apiworker.holders`: sorted set, holder id -> the server time (ms) of its last
  heartbeat. A holder is one consuming channel of one worker process (a worker process
  consumes on one channel, so in practice one holder per process).
- `_apiworker.rescued`: sorted set, holder id -> when (ms) another worker declared it
  dead and put its messages back; the holder reads its own entry at its next heartbeat
  (it was paused, not dead) and learns that the messages it holds are no longer its own.
- `_apiworker.inhand.{holder}`: hash, one field per message the holder has taken and not
  acknowledged: `{taken-at ms}:{fetch}.{n}:{queue key}` -> the queue item, byte for byte.
- `_apiworker.sequence`: a counter that makes every in-hand field unique.
- `_apiworker.deliveries`: hash, sha1 of a queue item -> deliveries of it that ended
  without an acknowledgement (a dead holder, a reject with requeue, the visibility
  timeout: what RabbitMQ's quorum queues count); the entry goes when the message is
  acknowledged or parked.
- `{queue}.dead`: list of parked items (oldest first), as on RabbitMQ's `{queue}.dead`.
  A message of a priority list (`{queue}\\x06\\x16{n}`) is parked under its base queue's
  name, so the operator's tools find every parked message of a queue in one list.
- `_apiworker.parked`: hash, sha1 of a parked item -> how many deliveries it had.

The scripts touch keys they compute (a holder's hash, a queue's dead list), so the
broker cannot be a Redis Cluster; kombu's Redis transport cannot either.
"""

from __future__ import annotations

HOLDERS = "_apiworker.holders"
INHAND_PREFIX = "_apiworker.inhand."
SEQUENCE = "_apiworker.sequence"
DELIVERIES = "_apiworker.deliveries"
RESCUED = "_apiworker.rescued"
PARKED_INFO = "_apiworker.parked"
DEAD_SUFFIX = ".dead"
#: kombu's separator between a queue's name and its priority (`{queue}\x06\x16{n}`).
PRIORITY_SEP = "\x06\x16"
#: Fields one ACK call names at most: Lua's `unpack` fails past about 8,000 values.
ACK_CHUNK = 1000

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

# Shared by the scripts that put a message back after a delivery that ended without an
# acknowledgement: count the delivery and requeue it at the head of its queue, or park it
# in its base queue's dead list once more than `limit` deliveries ended so. `put_back`
# returns the deliveries when it parked, false when it requeued; `put_back_into` notes
# either in a script's reply `out`: a parked message as its base queue, item and
# deliveries, a requeued one counted in `out[at]`. `deliveries` and `parked` are the two
# hashes, `suffix` the dead suffix.
_PUT_BACK = """
local function base_of(queue)
  local at = string.find(queue, '\\6\\22', 1, true)
  if at then return string.sub(queue, 1, at - 1) end
  return queue
end
local function put_back(queue, item, deliveries, parked, limit, suffix)
  local digest = redis.sha1hex(item)
  local count = redis.call('HINCRBY', deliveries, digest, 1)
  if count > limit then
    redis.call('RPUSH', base_of(queue) .. suffix, item)
    redis.call('HDEL', deliveries, digest)
    redis.call('HSET', parked, digest, count)
    return count
  end
  redis.call('RPUSH', queue, item)
  return false
end
local function put_back_into(out, at, queue, item, deliveries, parked, limit, suffix)
  local count = put_back(queue, item, deliveries, parked, limit, suffix)
  if count then
    out[#out + 1] = base_of(queue)
    out[#out + 1] = item
    out[#out + 1] = count
  else
    out[at] = out[at] + 1
  end
end
"""

#: The most jobs of held upstreams one fetch moves out of a shared queue (each costs a
#: JSON decode inside the script, which blocks Redis meanwhile).
MAX_MOVES = 100
#: What a fetch that took nothing answers when it stopped at MAX_MOVES: more are left to
#: move, and another job may wait behind them, so the caller fetches again at once
#: instead of going idle.
MORE_TO_MOVE = "more"

#: Take up to ARGV[2] messages and record each as in hand, in one step; ARGV[4..]: the
#: admission's held upstreams (task prefix, queue key), see the script.
#: KEYS: holders, the holder's in-hand hash, sequence, then the queue keys, in priority
#: groups of ARGV[3] keys each (kombu's order: every queue at priority 0, then 3...).
#: Within a group the queues take turns, one message each, so a busy queue cannot starve
#: the others. Returns a flat list: field, key index (0-based), item, ...
#:
#: A fetch that takes nothing writes nothing but admission's moves (an idle fleet sends
#: its AOF and replicas only heartbeats). One that takes a message registers the holder
#: if it is not yet (`ZADD NX`: a process killed before its first heartbeat still has
#: its messages rescued), but never refreshes its heartbeat: only the heartbeat thread
#: does, so a heartbeat's age tells how long that thread has been silent (HEARTBEAT).
FETCH = (
    (
        _PRELUDE
        + """
local want = tonumber(ARGV[2])
local group = tonumber(ARGV[3])
local out = {}
local got = 0
local now = nil
local call = nil
-- Admission (the upstreams' budgets, `redis_transport.admission`): ARGV[4..] are pairs
-- of a task-name prefix whose upstream has no budget now and the queue key its jobs wait
-- in; a job of theirs met in another queue is moved to the head of that one, not taken.
-- Past MAX_MOVES moves, such a job stays at the head of the queue it was met in, and that
-- queue is read no further in this fetch: a held upstream's job is never taken. A fetch
-- that took nothing then answers MORE_TO_MOVE, and the caller fetches again at once.
local held = {}
for j = 4, #ARGV - 1, 2 do held[#held + 1] = {ARGV[j], ARGV[j + 1]} end
local moved = 0
local capped = false
local function held_in(item, key)
  if #held == 0 then return nil end
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
      if wait_in and moved >= @MAX_MOVES@ then
        redis.call('RPUSH', KEYS[i], item)
        capped = true
      elseif wait_in then
        redis.call('RPUSH', wait_in, item)
        moved = moved + 1
        still[#still + 1] = i
      elseif item then
        if not call then
          now = now_ms()
          call = redis.call('INCR', KEYS[3])
          redis.call('ZADD', KEYS[1], 'NX', now, ARGV[1])
        end
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
if got == 0 and capped then return {'@MORE_TO_MOVE@'} end
return out
"""
    )
    .replace("@MAX_MOVES@", str(MAX_MOVES))
    .replace("@MORE_TO_MOVE@", MORE_TO_MOVE)
)

#: Acknowledge: forget the in-hand fields ARGV (and their delivery counts, if any).
#: KEYS: the holder's in-hand hash, deliveries. The caller sends at most ACK_CHUNK
#: fields a call (Lua's `unpack` has a limit).
ACK = """
if redis.call('HLEN', KEYS[2]) > 0 then
  for _, field in ipairs(ARGV) do
    local item = redis.call('HGET', KEYS[1], field)
    if item then redis.call('HDEL', KEYS[2], redis.sha1hex(item)) end
  end
end
return redis.call('HDEL', KEYS[1], unpack(ARGV))
"""

#: Hand back: put the in-hand fields ARGV[4..] at the head of their queues (taken next).
#: ARGV[1] is 1 when each is a delivery that ended without an acknowledgement (a reject
#: with requeue: counted, and parked past the limit ARGV[2]), 0 when the message never
#: reached a job (a warm shutdown's unstarted jobs, a batch no consumer wanted). A field
#: already gone (acknowledged, or rescued by another worker) is skipped, so a message is
#: never put back twice. KEYS: the holder's in-hand hash, deliveries, parked info.
#: ARGV[3]: the dead-letter suffix. Returns {how many went back, then for each parked
#: message: its queue key, the item, its deliveries}.
REQUEUE = (
    _PRELUDE
    + _PUT_BACK
    + """
local counted = ARGV[1] == '1'
local limit = tonumber(ARGV[2])
local out = {0}
for i = 4, #ARGV do
  local field = ARGV[i]
  local item = redis.call('HGET', KEYS[1], field)
  if item then
    local queue = queue_of(field)
    redis.call('HDEL', KEYS[1], field)
    if counted then
      put_back_into(out, 1, queue, item, KEYS[2], KEYS[3], limit, ARGV[3])
    else
      redis.call('RPUSH', queue, item)
      out[1] = out[1] + 1
    end
  end
end
return out
"""
)

#: The heartbeat of holder ARGV[1], and the rescue of dead holders by a live one.
#: KEYS: holders, deliveries, parked info, rescued. ARGV: holder, the heartbeat timeout
#: (ms), the delivery limit, the in-hand key prefix (prefixed), the dead-letter suffix,
#: the most (ms) this holder's own previous heartbeat may be old for it to judge others.
#:
#: A holder whose heartbeat is older than the timeout is dead: its messages go back to
#: the head of their queues, or to the dead list once more than the limit of deliveries
#: ended without an acknowledgement (RabbitMQ's `x-delivery-limit` counts the same way),
#: and it is recorded in `rescued`. Up to 16 holders a call.
#:
#: A rescuer trusts no stale view. If its own previous heartbeat is older than ARGV[6],
#: its thread (or Redis: a `DEBUG SLEEP`, a fork, a failover) was paused as long as the
#: others may have been, so it only beats and rescues nobody; so does its first heartbeat
#: (no previous one to judge by). A paused Redis therefore rescues no one: every live
#: holder's heartbeat, sent during the pause, is served as it ends, before any rescuer's
#: next one. A holder that finds itself in `rescued` was declared dead while it lived.
#:
#: Returns {status, requeued count, then for each parked message: its queue key, the
#: item, its deliveries}. Status 0: judged the others; 1: own view stale (or first beat),
#: judged nobody; 2: this holder had been declared dead (its messages went to others).
HEARTBEAT = (
    _PRELUDE
    + _PUT_BACK
    + """
local now = now_ms()
local previous = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {2, 0}
end
if not previous or now - tonumber(previous) > tonumber(ARGV[6]) then
  return {1, 0}
end
local limit = tonumber(ARGV[3])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, 16)
local out = {0, 0}
for _, holder in ipairs(dead) do
  local inhand = ARGV[4] .. holder
  local entries = redis.call('HGETALL', inhand)
  for i = 1, #entries, 2 do
    local queue = queue_of(entries[i])
    local item = entries[i + 1]
    put_back_into(out, 2, queue, item, KEYS[2], KEYS[3], limit, ARGV[5])
  end
  redis.call('DEL', inhand)
  redis.call('ZREM', KEYS[1], holder)
  redis.call('ZADD', KEYS[4], now, holder)
end
if #dead > 0 then
  -- A rescued holder that never comes back leaves its entry for a day, no longer.
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 86400000)
end
return out
"""
)

#: The visibility timeout, the backstop for a holder that is alive but stuck: put back
#: every in-hand message taken more than ARGV[1] ms ago, counting a delivery (parked past
#: the limit ARGV[3], as RabbitMQ counts a consumer timeout). KEYS: holders, deliveries,
#: parked info. ARGV[2]: the in-hand key prefix; ARGV[4]: the dead-letter suffix.
#: Returns {how many went back, then for each parked message: queue key, item, deliveries}.
VISIBILITY = (
    _PRELUDE
    + _PUT_BACK
    + """
local ceiling = now_ms() - tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local out = {0}
for _, holder in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local inhand = ARGV[2] .. holder
  for _, field in ipairs(redis.call('HKEYS', inhand)) do
    local taken = tonumber(string.match(field, '^(%d+):'))
    if taken and taken < ceiling then
      local queue = queue_of(field)
      local item = redis.call('HGET', inhand, field)
      redis.call('HDEL', inhand, field)
      put_back_into(out, 1, queue, item, KEYS[2], KEYS[3], limit, ARGV[4])
    end
  end
end
return out
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

#: Replay the oldest parked message of a dead list, if it is still ARGV[1]: to the tail
#: of KEYS[2] (its queue, or the priority list it was taken from), as a new publish
#: would be, in the same step as it leaves the dead list (so it is never in neither, nor
#: in both). KEYS: the dead list, the queue, parked info. Returns the item, or nil when
#: the list is empty or another replay took that item first.
REPLAY = """
local item = redis.call('LINDEX', KEYS[1], 0)
if item and item == ARGV[1] then
  redis.call('LPOP', KEYS[1])
  redis.call('LPUSH', KEYS[2], item)
  redis.call('HDEL', KEYS[3], redis.sha1hex(item))
  return item
end
return nil
"""
