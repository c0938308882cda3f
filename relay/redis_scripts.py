"""Lua run inside Redis: seq assignment, backlog trim and the publish of each batch's
seqs happen as one atomic step, so two instances never hand out the same seq and every
instance sees a book's ops in seq order.

The op texts never enter Lua: Redis's Lua hashes every byte of every string it is
given, which was a third of Redis's time per op. A batch is one MULTI/EXEC transaction
(relay.redis_broker): RPUSH of the texts to each book's op list, this script, then one
PUBLISH of the texts per book. The script fixes what the texts mean (their seqs, and
which are retries to drop again) and publishes that as a small header just before each
book's texts. Keys hold `book_ref` only. Payloads are never read here.
"""

from __future__ import annotations

# Shared by both scripts. A book's keys: its meta hash (epoch, seq, run, oldest, bytes,
# `ot` the time of the oldest retained op, `x` when the keys' lifetimes were last set),
# its op list and its "time:size" list, one entry per retained op, oldest first.
# The op list holds each op's text after its seq (the reader puts the head and seq
# back: no line is built in Lua); an entry starting with "{" is a whole line, as
# stored before, and read as is.
#
# `head` also checks the op list against the meta: it must hold the retained ops, then
# the `pushed` texts of the running transaction. Longer: a transaction whose script
# failed (NOSCRIPT after a SCRIPT FLUSH) left its texts behind the retained ops; they
# are cut out. Shorter: the history is gone (the list expired or was deleted), so a
# new epoch, as after a flush. The list then keeps only the `pushed` texts.
#
# `run` is the run_id of the Redis answering now, read by every call: a restart (even
# one that kept the data) or a failover gives every book a new epoch before its next
# seq, however late an instance learns of it.
_COMMON = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local SIZES, TOTAL = KEYS[#KEYS - 1], KEYS[#KEYS]

-- A book's retained bytes, by its meta key, in the sizes set and the total.
local function setbytes(mk, bytes)
  local old = tonumber(redis.call('ZSCORE', SIZES, mk) or '0')
  if bytes > 0 then
    redis.call('ZADD', SIZES, bytes, mk)
  else
    redis.call('ZREM', SIZES, mk)
  end
  if bytes ~= old then
    redis.call('INCRBY', TOTAL, bytes - old)
  end
end

local function head(mk, lk, tk, fresh_epoch, keep, pushed)
  local m = redis.call('HMGET', mk, 'epoch', 'seq', 'run', 'oldest', 'bytes', 'ot', 'x')
  local held = redis.call('LLEN', lk)
  local retained = m[1] and (tonumber(m[2]) - tonumber(m[4]) + 1) or 0
  if (not m[1]) or m[3] ~= run or held < retained + pushed then
    -- a new store, a flush, a Redis restart, a lost list: the history may be gone, so a
    -- new epoch
    if pushed > 0 then
      redis.call('LTRIM', lk, -pushed, -1)
    else
      redis.call('DEL', lk)
    end
    redis.call('DEL', tk)
    setbytes(mk, 0)
    redis.call('HSET', mk, 'epoch', fresh_epoch, 'seq', 0, 'run', run, 'oldest', 1, 'bytes', 0,
               'ot', 0)
    redis.call('EXPIRE', mk, keep)
    return fresh_epoch, 0, 1, 0, 0, nil
  end
  if held > retained + pushed then
    local mine = {}
    if pushed > 0 then
      mine = redis.call('LRANGE', lk, -pushed, -1)
    end
    if retained > 0 then
      redis.call('LTRIM', lk, 0, retained - 1)
    else
      redis.call('DEL', lk)
    end
    if pushed > 0 then
      redis.call('RPUSH', lk, unpack(mine))
    end
  end
  return m[1], tonumber(m[2]), tonumber(m[4]), tonumber(m[5]), tonumber(m[6]), tonumber(m[7])
end

-- Drop the oldest ops beyond the limits, in one LTRIM per list. `ot` (the oldest op's
-- time; nil when unknown) spares reading the times when nothing has to go.
local function trim(lk, tk, seq, oldest, bytes, ot, now, max_ops, max_bytes, max_age)
  if oldest > seq then
    return oldest, bytes, 0
  end
  if ot and ot > 0 and (seq - oldest + 1) <= max_ops and bytes <= max_bytes
     and ot > now - max_age then
    return oldest, bytes, ot
  end
  local drop, from = 0, 0
  local chunk = math.max(16, seq - oldest + 2 - max_ops)
  while oldest <= seq do
    local entries = redis.call('LRANGE', tk, from, from + chunk - 1)
    if #entries == 0 then
      break  -- the times ran out before the counter: keep nothing
    end
    for j = 1, #entries do
      local e = entries[j]
      local sep = string.find(e, ':', 1, true)
      local ts = tonumber(string.sub(e, 1, sep - 1))
      if (seq - oldest + 1) <= max_ops and bytes <= max_bytes and ts > now - max_age then
        if drop > 0 then
          redis.call('LTRIM', lk, drop, -1)
          redis.call('LTRIM', tk, drop, -1)
        end
        return oldest, bytes, ts
      end
      oldest = oldest + 1
      bytes = bytes - tonumber(string.sub(e, sep + 1))
      drop = drop + 1
    end
    from = from + #entries
  end
  redis.call('DEL', lk, tk)
  return seq + 1, 0, 0
end

-- Bring one book (by its meta key) down to `level` bytes; returns the bytes it gave up.
-- A book whose keys are gone, or written before a restart, holds nothing any more.
local function shrink(mk, level, now, max_ops, max_bytes, max_age)
  local base = string.sub(mk, 1, -2)
  local old = tonumber(redis.call('ZSCORE', SIZES, mk) or '0')
  local m = redis.call('HMGET', mk, 'epoch', 'seq', 'run', 'oldest', 'bytes', 'ot')
  if (not m[1]) or m[3] ~= run then
    setbytes(mk, 0)
    return old
  end
  local oldest, bytes, ot = trim(base .. 'l', base .. 't', tonumber(m[2]), tonumber(m[4]),
    tonumber(m[5]), tonumber(m[6]), now, max_ops, math.min(max_bytes, level), max_age)
  redis.call('HSET', mk, 'oldest', oldest, 'bytes', bytes, 'ot', ot)
  setbytes(mk, bytes)
  return old - bytes
end

-- Every book's backlog together over `max_total`: the books holding the most give up
-- their oldest ops first, down to a common level, until the total is a 64th below the
-- bound (so this search runs once per that many bytes of appends, not on every one).
local function bound_total(now, max_ops, max_bytes, max_age, max_total)
  local total = tonumber(redis.call('GET', TOTAL) or '0')
  if total <= max_total then
    return
  end
  local target = max_total - math.floor(max_total / 64)
  for _ = 1, 16 do
    local excess = total - target
    if excess <= 0 then
      return
    end
    local top = redis.call('ZREVRANGE', SIZES, 0, 64, 'WITHSCORES')
    local n = #top / 2
    if n == 0 then
      return
    end
    local held, level = 0, 0
    for k = 1, math.min(n, 64) do
      held = held + tonumber(top[2 * k])
      level = (k < n) and tonumber(top[2 * k + 2]) or 0
      if held - k * level >= excess then
        level = math.floor((held - excess) / k)
        break
      end
    end
    for k = 1, math.min(n, 64) do
      if tonumber(top[2 * k]) > level then
        total = total - shrink(top[2 * k - 1], level, now, max_ops, max_bytes, max_age)
      end
    end
  end
end
"""

# A batch of appends, any books, run inside the batch's transaction, after the RPUSH of
# its texts (none when max ops is 0). KEYS: per book its meta hash, op list and times
# list (KEYS[3b+1..3b+3] for the b-th book, from 0), then per book its client-id hashes
# of the batch's day and of the day before (KEYS[3B+2b+1], KEYS[3B+2b+2] for B books; a
# batch never spans two days).
# ARGV[1] now, ARGV[2..4] max ops, bytes, age, ARGV[5] how long a book's keys outlive
# their last write, ARGV[6] how long a client id is remembered, ARGV[7] the bound on
# every book's bytes together, ARGV[8] the number of books; then per book: a fresh
# epoch, its channel, its number of ops, and per op (4 each): its id field
# ("device_id client_id", '' for an op without an id), origin connection, "time:size",
# size (of the op's text).
# Per book: the head read once, the ids looked up with one HMGET per id hash, the
# retries' texts taken out of the op list again (rare), the times pushed with one
# RPUSH, trimmed, the head written once, and ONE header published:
# "h<first seq> <origin or - for a retry> ..." (the non-retried ops of a book take
# consecutive seqs; the texts follow in the transaction's next message on the channel).
# A retained op counts as the size of its text.
# Returns two numbers per op, in the order given: the seq and 0 (the op's own time is
# its relay time), or for a duplicate (a retried id of this epoch, not relayed) the
# first seq negated and the first relay time.
APPEND_BATCH = (
    _COMMON
    + """
local now = tonumber(ARGV[1])
local max_ops, max_bytes, max_age = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local keep, id_ttl, max_total = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local out = {}
local fresh = {}  -- KEYS index -> {id field -> "seq:time:size:epoch"} written by this batch
local books = tonumber(ARGV[8])
local a = 9
for b = 0, books - 1 do
  local mk, lk, tk = KEYS[3 * b + 1], KEYS[3 * b + 2], KEYS[3 * b + 3]
  local k = 3 * books + 2 * b + 1  -- the book's ids: KEYS[k] today's, KEYS[k + 1] yesterday's
  local chan, n = ARGV[a + 1], tonumber(ARGV[a + 2])
  local pushed = max_ops > 0 and n or 0
  local epoch, seq, oldest, bytes, ot, x = head(mk, lk, tk, ARGV[a], keep, pushed)
  a = a + 3
  local cids = {}
  for i = a, a + 4 * (n - 1), 4 do
    if ARGV[i] ~= '' then
      cids[#cids + 1] = ARGV[i]
    end
  end
  local known = {{}, {}}
  if #cids > 0 then
    for day = 1, 2 do
      local values = redis.call('HMGET', KEYS[k + day - 1], unpack(cids))
      local found = known[day]
      for j = 1, #cids do
        if values[j] then
          found[cids[j]] = values[j]
        end
      end
    end
  end
  local empty = oldest > seq
  local first = seq + 1
  local times, retried = {}, {}
  local parts = {'h', first}
  for i = a, a + 4 * (n - 1), 4 do
    local cid, t = ARGV[i], ARGV[i + 2]
    local dup = false
    if cid ~= '' then
      -- (this batch writes only today's key: a batch never spans two days)
      local prior = (fresh[k] and fresh[k][cid]) or known[1][cid] or known[2][cid]
      if prior then
        -- "seq:time:size:epoch" (or "seq:time:epoch", as stored before)
        local ps, pt = string.match(prior, '^(%d+):(%d+):')
        if string.match(prior, ':([^:]*)$') == epoch then
          out[#out + 1] = -tonumber(ps)
          out[#out + 1] = tonumber(pt)
          dup = true
        end
      end
    end
    parts[#parts + 1] = ' '
    if dup then
      parts[#parts + 1] = '-'
      retried[(i - a) / 4 + 1] = true
    else
      seq = seq + 1
      times[#times + 1] = t
      parts[#parts + 1] = ARGV[i + 1]
      bytes = bytes + tonumber(ARGV[i + 3])
      out[#out + 1] = seq
      out[#out + 1] = 0
      if cid ~= '' then
        local mine = fresh[k]
        if not mine then
          mine = {}
          fresh[k] = mine
        end
        mine[cid] = seq .. ':' .. t .. ':' .. epoch
      end
    end
  end
  a = a + 4 * n
  if #times < n and pushed > 0 then
    -- retries: their texts were pushed with the others; keep only the new ops' texts
    local texts, kept = redis.call('LRANGE', lk, -n, -1), {}
    for j = 1, n do
      if not retried[j] then
        kept[#kept + 1] = texts[j]
      end
    end
    redis.call('LTRIM', lk, 0, -n - 1)
    if #kept > 0 then
      redis.call('RPUSH', lk, unpack(kept))
    end
  end
  if #times > 0 then
    if max_ops > 0 then
      redis.call('RPUSH', tk, unpack(times))
      if empty then
        ot = tonumber(string.sub(times[1], 1, string.find(times[1], ':', 1, true) - 1))
      end
      oldest, bytes, ot = trim(lk, tk, seq, oldest, bytes, ot, now, max_ops, max_bytes, max_age)
    else
      oldest, bytes, ot = seq + 1, 0, 0
    end
    -- The keys' lifetimes: set when the lists are made, else refreshed now and then.
    if empty or not x or now - x >= keep / 24 then
      x = now
      redis.call('EXPIRE', mk, keep)
      redis.call('EXPIRE', lk, keep)
      redis.call('EXPIRE', tk, keep)
    end
    redis.call('HSET', mk, 'seq', seq, 'oldest', oldest, 'bytes', bytes, 'ot', ot, 'x', x)
    setbytes(mk, bytes)
  end
  redis.call('PUBLISH', chan, table.concat(parts))
end
for k, ids in pairs(fresh) do
  local fields = {}
  for cid, value in pairs(ids) do
    fields[#fields + 1] = cid
    fields[#fields + 1] = value
  end
  redis.call('HSET', KEYS[k], unpack(fields))
  redis.call('EXPIRE', KEYS[k], id_ttl)
end
bound_total(now, max_ops, max_bytes, max_age, max_total)
return out
"""
)

# KEYS[1] meta hash, KEYS[2] op list, KEYS[3] times list, KEYS[4] the sizes set,
# KEYS[5] the total (as every script of _COMMON: the last two). ARGV[1] a fresh epoch,
# ARGV[2] now, ARGV[3..5] max ops, bytes, age, ARGV[6] how long the book's keys outlive
# their last write, ARGV[7] since, ARGV[8] epoch ('' for none), ARGV[9] limit (0: the
# head only). The entries returned are the
# ops after `start`, as stored (see above).
READ = (
    _COMMON
    + """
local keep = tonumber(ARGV[6])
local epoch, seq, oldest, bytes, ot = head(KEYS[1], KEYS[2], KEYS[3], ARGV[1], keep, 0)
local trimmed_oldest, trimmed_bytes, trimmed_ot = trim(KEYS[2], KEYS[3], seq, oldest, bytes, ot,
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
if trimmed_oldest ~= oldest or trimmed_ot ~= ot then
  redis.call('HSET', KEYS[1], 'oldest', trimmed_oldest, 'bytes', trimmed_bytes, 'ot', trimmed_ot)
  setbytes(KEYS[1], trimmed_bytes)
end
oldest, bytes = trimmed_oldest, trimmed_bytes
local since, limit = tonumber(ARGV[7]), tonumber(ARGV[9])
local start, gap = since, 0
if (since > 0 and ARGV[8] ~= epoch) or since > seq or since + 1 < oldest then
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

# A completed snapshot covers the ops through ARGV[4]: drop them, only while the book is
# still in epoch ARGV[3] (its seqs name other ops in another). KEYS as READ (with the
# sizes set and total last); ARGV[1] a
# fresh epoch and ARGV[2] the keys' lifetime (for `head`, which checks the lists as
# every call does). The meta hash keeps `oldest` (at most seq + 1), `bytes` less the
# dropped ops' sizes and `ot` the time of the new oldest op (0 when none is left).
# Returns the number of ops dropped.
TRIM_THROUGH = (
    _COMMON
    + """
local epoch, seq, oldest, bytes = head(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), 0)
if epoch ~= ARGV[3] then
  return 0
end
local n = math.min(tonumber(ARGV[4]), seq) - oldest + 1
if n <= 0 then
  return 0
end
local entries = redis.call('LRANGE', KEYS[3], 0, n - 1)
for j = 1, #entries do
  local e = entries[j]
  bytes = bytes - tonumber(string.sub(e, string.find(e, ':', 1, true) + 1))
end
oldest = oldest + n
local ot = 0
if oldest > seq then
  redis.call('DEL', KEYS[2], KEYS[3])
  bytes = 0
else
  redis.call('LTRIM', KEYS[2], n, -1)
  redis.call('LTRIM', KEYS[3], n, -1)
  local first = redis.call('LINDEX', KEYS[3], 0)
  if first then
    ot = tonumber(string.sub(first, 1, string.find(first, ':', 1, true) - 1))
  end
end
redis.call('HSET', KEYS[1], 'oldest', oldest, 'bytes', bytes, 'ot', ot)
setbytes(KEYS[1], bytes)
return n
"""
)

# KEYS[1] the device's refund counter; ARGV[1] the connect window in seconds. One call,
# so a counter never outlives its window (INCR then a lost EXPIRE would keep it).
GRANT_REFUND = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# A book's sockets, as one round trip: KEYS[1] its socket set (device|conn members,
# scored by open time), KEYS[2] the instances; ARGV[1] "add" (ARGV[2] the member,
# ARGV[3] its score), "remove" (ARGV[2]) or "read". Returns the members whose
# instance is not reaped, oldest first (a conn id is its instance, ".", a number).
SOCKETS = """
if ARGV[1] == 'add' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
elseif ARGV[1] == 'remove' then
  redis.call('ZREM', KEYS[1], ARGV[2])
end
local out, alive = {}, {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local instance = string.match(m, '|([^.|]*)%.')
  if instance ~= nil then
    if alive[instance] == nil then
      alive[instance] = redis.call('ZSCORE', KEYS[2], instance) ~= false
    end
    if alive[instance] then
      out[#out + 1] = m
    end
  end
end
return out
"""

# KEYS[1] the device's refund counter.
TAKE_REFUND = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
"""

# Erasure's part of the sizes: KEYS[1] the book's meta key, then the sizes and total.
FORGET_SIZE = (
    _COMMON
    + """
setbytes(KEYS[1], 0)
return 0
"""
)

# The sizes set against the books it names, a slice per call (a book whose keys expired
# or predate a restart holds nothing). KEYS: the sizes set and total; ARGV[1] the cursor.
# Returns the next cursor ("0": a whole pass done).
SWEEP_SIZES = (
    _COMMON
    + """
local r = redis.call('ZSCAN', SIZES, ARGV[1], 'COUNT', 100)
local items = r[2]
for i = 1, #items, 2 do
  local m = redis.call('HMGET', items[i], 'epoch', 'run', 'bytes')
  if (not m[1]) or m[2] ~= run then
    setbytes(items[i], 0)
  elseif tonumber(m[3]) ~= tonumber(items[i + 1]) then
    setbytes(items[i], tonumber(m[3]))
  end
end
return r[1]
"""
)
