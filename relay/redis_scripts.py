"""Lua run inside Redis: seq assignment, backlog append and trim, and the publish to the
book's channel happen as one atomic step, so two instances never hand out the same seq
and every instance sees a book's ops in seq order.

Keys hold `book_ref` only. Payloads are opaque strings here: concatenated, never read.
"""

from __future__ import annotations

# Shared by both scripts. KEYS[1] meta hash, KEYS[2] op lines, KEYS[3] "time:size" per op.
# ARGV[1] Redis run_id as this instance read it, ARGV[2] a fresh epoch, ARGV[3] now,
# ARGV[4..6] max ops, bytes, age, ARGV[7] how long the book's keys outlive their last write.
_COMMON = """
local KEEP = 7
local function head()
  local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'run', 'oldest', 'bytes')
  if (not m[1]) or m[3] ~= ARGV[1] then
    -- a new store, a flush, or a Redis restart: the history may be gone, so a new epoch
    redis.call('DEL', KEYS[2], KEYS[3])
    redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'seq', 0, 'run', ARGV[1], 'oldest', 1,
               'bytes', 0)
    redis.call('EXPIRE', KEYS[1], ARGV[KEEP])
    return ARGV[2], 0, 1, 0
  end
  return m[1], tonumber(m[2]), tonumber(m[4]), tonumber(m[5])
end

local function trim(seq, oldest, bytes)
  local now = tonumber(ARGV[3])
  local max_ops, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
  local max_age = tonumber(ARGV[6])
  while oldest <= seq do
    local t = redis.call('LINDEX', KEYS[3], 0)
    if not t then
      return seq + 1, 0
    end
    local sep = string.find(t, ':', 1, true)
    local ts = tonumber(string.sub(t, 1, sep - 1))
    local size = tonumber(string.sub(t, sep + 1))
    if (seq - oldest + 1) <= max_ops and bytes <= max_bytes and ts > now - max_age then
      break
    end
    redis.call('LPOP', KEYS[2])
    redis.call('LPOP', KEYS[3])
    oldest = oldest + 1
    bytes = bytes - size
  end
  return oldest, bytes
end
"""

# KEYS[4], KEYS[5]: the device's client ids of today and yesterday.
# ARGV[8] client id ('' for none), ARGV[9] the op line after its seq, ARGV[10] origin
# connection, ARGV[11] channel, ARGV[12] client-id lifetime (s).
APPEND = (
    _COMMON
    + """
local epoch, seq, oldest, bytes = head()
local now = ARGV[3]
local cid = ARGV[8]
if cid ~= '' then
  local prior = redis.call('HGET', KEYS[4], cid) or redis.call('HGET', KEYS[5], cid)
  if prior then
    local a, b, e = string.match(prior, '^(%d+):(%d+):(.*)$')
    if e == epoch then
      return {1, tonumber(a), tonumber(b)}
    end
  end
end
seq = seq + 1
local line = '{"type":"crdt_operation","seq":' .. seq .. ARGV[9]
if tonumber(ARGV[4]) > 0 then
  redis.call('RPUSH', KEYS[2], line)
  redis.call('RPUSH', KEYS[3], now .. ':' .. #line)
  bytes = bytes + #line
  oldest, bytes = trim(seq, oldest, bytes)
else
  oldest, bytes = seq + 1, 0
end
redis.call('HSET', KEYS[1], 'seq', seq, 'oldest', oldest, 'bytes', bytes)
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], ARGV[KEEP])
end
if cid ~= '' then
  redis.call('HSET', KEYS[4], cid, seq .. ':' .. now .. ':' .. epoch)
  redis.call('EXPIRE', KEYS[4], ARGV[12])
end
redis.call('PUBLISH', ARGV[11], 'o' .. ARGV[10] .. ' ' .. seq .. '\\n' .. line)
return {0, seq, tonumber(now)}
"""
)

# ARGV[8] since, ARGV[9] epoch ('' for none), ARGV[10] limit (0: the head only).
READ = (
    _COMMON
    + """
local epoch, seq, oldest, bytes = head()
oldest, bytes = trim(seq, oldest, bytes)
redis.call('HSET', KEYS[1], 'oldest', oldest, 'bytes', bytes)
local since, limit = tonumber(ARGV[8]), tonumber(ARGV[10])
local start, gap = since, 0
if (since > 0 and ARGV[9] ~= epoch) or since > seq or since + 1 < oldest then
  start, gap = oldest - 1, 1
end
local lines = {}
local last = math.min(seq, start + limit)
if limit > 0 and start + 1 <= last then
  lines = redis.call('LRANGE', KEYS[2], start + 1 - oldest, last - oldest)
end
return {epoch, seq, oldest, bytes, gap, start, lines}
"""
)

# KEYS[1] the device's refund counter.
TAKE_REFUND = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
"""
