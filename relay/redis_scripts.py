"""Lua run inside Redis: seq assignment, backlog append and trim, and the publish to the
book's channel happen as one atomic step, so two instances never hand out the same seq
and every instance sees a book's ops in seq order.

Keys hold `book_ref` only. Payloads are opaque strings here: concatenated, never read.
"""

from __future__ import annotations

# Shared by both scripts: the head of a book (made anew, with the fresh epoch given,
# when its counter is missing or was written under another Redis run_id), and the trim
# of its backlog to the limits, popping from the front in one LTRIM per list.
_COMMON = """
local function head(mk, lk, tk, run, fresh_epoch, keep)
  local m = redis.call('HMGET', mk, 'epoch', 'seq', 'run', 'oldest', 'bytes')
  if (not m[1]) or m[3] ~= run then
    -- a new store, a flush, or a Redis restart: the history may be gone, so a new epoch
    redis.call('DEL', lk, tk)
    redis.call('HSET', mk, 'epoch', fresh_epoch, 'seq', 0, 'run', run, 'oldest', 1, 'bytes', 0)
    redis.call('EXPIRE', mk, keep)
    return fresh_epoch, 0, 1, 0
  end
  return m[1], tonumber(m[2]), tonumber(m[4]), tonumber(m[5])
end

-- tk holds "time:size" per retained op, oldest first, alongside the op lines in lk.
local function trim(lk, tk, seq, oldest, bytes, now, max_ops, max_bytes, max_age)
  if oldest > seq then
    return oldest, bytes
  end
  local drop, from = 0, 0
  local chunk = math.max(16, seq - oldest + 2 - max_ops)
  while oldest <= seq do
    local entries = redis.call('LRANGE', tk, from, from + chunk - 1)
    if #entries == 0 then
      -- the times ran out before the counter: keep nothing
      redis.call('DEL', lk, tk)
      return seq + 1, 0
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
        return oldest, bytes
      end
      oldest = oldest + 1
      bytes = bytes - tonumber(string.sub(e, sep + 1))
      drop = drop + 1
    end
    from = from + #entries
  end
  redis.call('DEL', lk, tk)
  return seq + 1, 0
end
"""

# A batch of appends, any books, as one atomic step. KEYS: per book its meta hash, op
# lines and "time:size" list (KEYS[3b+1..3b+3] for the b-th book, from 0), then the
# client-id hashes: each op names k with KEYS[k] its device's ids of the op's day and
# KEYS[k+1] of the day before (a batch never spans two days).
# ARGV[1] Redis run_id as this instance read it, ARGV[2] now, ARGV[3..5] max ops,
# bytes, age, ARGV[6] how long a book's keys outlive their last write, ARGV[7] how
# long a client id is remembered, ARGV[8] the number of books; then per book: a fresh
# epoch, its channel, its number of ops, and per op (5 each): client id ('' for none),
# the op line after its seq, origin connection, the op's time, k.
# Per book: the head read once, the ids looked up with one HMGET per id hash, the new
# lines pushed with one RPUSH, trimmed, the head written once, and ONE message
# published: "b<first seq> <origin> <origin>...\n<line>\n<line>..." (a JSON line
# holds no raw newline; the non-duplicate ops of a book take consecutive seqs).
# Returns two numbers per op, in the order given: seq and relay time, the seq negated
# for a duplicate (a retried id of this epoch: the first seq and time, not relayed).
APPEND_BATCH = (
    _COMMON
    + """
local run, now = ARGV[1], tonumber(ARGV[2])
local max_ops, max_bytes, max_age = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local keep, id_ttl = ARGV[6], ARGV[7]
local out = {}
local fresh = {}  -- KEYS index -> {client id -> "seq:time:epoch"} written by this batch
local a = 9
for b = 0, tonumber(ARGV[8]) - 1 do
  local mk, lk, tk = KEYS[3 * b + 1], KEYS[3 * b + 2], KEYS[3 * b + 3]
  local epoch, seq, oldest, bytes = head(mk, lk, tk, run, ARGV[a], keep)
  local chan, n = ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local ask = {}
  for i = a, a + 5 * (n - 1), 5 do
    if ARGV[i] ~= '' then
      local k = tonumber(ARGV[i + 4])
      for kk = k, k + 1 do
        local cids = ask[kk]
        if not cids then
          cids = {}
          ask[kk] = cids
        end
        cids[#cids + 1] = ARGV[i]
      end
    end
  end
  local known = {}
  for kk, cids in pairs(ask) do
    local values = redis.call('HMGET', KEYS[kk], unpack(cids))
    local found = {}
    for j = 1, #cids do
      if values[j] then
        found[cids[j]] = values[j]
      end
    end
    known[kk] = found
  end
  local first = seq + 1
  local lines, times, origins = {}, {}, {}
  for i = a, a + 5 * (n - 1), 5 do
    local cid, t, k = ARGV[i], ARGV[i + 3], tonumber(ARGV[i + 4])
    local dup = false
    if cid ~= '' then
      local prior = (fresh[k] and fresh[k][cid]) or known[k][cid]
        or (fresh[k + 1] and fresh[k + 1][cid]) or known[k + 1][cid]
      if prior then
        local ps, pt, pe = string.match(prior, '^(%d+):(%d+):(.*)$')
        if pe == epoch then
          out[#out + 1] = -tonumber(ps)
          out[#out + 1] = tonumber(pt)
          dup = true
        end
      end
    end
    if not dup then
      seq = seq + 1
      local line = '{"type":"crdt_operation","seq":' .. seq .. ARGV[i + 1]
      lines[#lines + 1] = line
      times[#times + 1] = t .. ':' .. #line
      origins[#origins + 1] = ARGV[i + 2]
      bytes = bytes + #line
      out[#out + 1] = seq
      out[#out + 1] = tonumber(t)
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
  a = a + 5 * n
  if #lines > 0 then
    if max_ops > 0 then
      redis.call('RPUSH', lk, unpack(lines))
      redis.call('RPUSH', tk, unpack(times))
      oldest, bytes = trim(lk, tk, seq, oldest, bytes, now, max_ops, max_bytes, max_age)
    else
      oldest, bytes = seq + 1, 0
    end
    redis.call('HSET', mk, 'seq', seq, 'oldest', oldest, 'bytes', bytes)
    redis.call('EXPIRE', mk, keep)
    redis.call('EXPIRE', lk, keep)
    redis.call('EXPIRE', tk, keep)
    redis.call('PUBLISH', chan,
      'b' .. first .. ' ' .. table.concat(origins, ' ') .. '\\n' .. table.concat(lines, '\\n'))
  end
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
return out
"""
)

# KEYS[1] meta hash, KEYS[2] op lines, KEYS[3] "time:size" per op. ARGV[1] Redis
# run_id as this instance read it, ARGV[2] a fresh epoch, ARGV[3] now, ARGV[4..6] max
# ops, bytes, age, ARGV[7] how long the book's keys outlive their last write, ARGV[8]
# since, ARGV[9] epoch ('' for none), ARGV[10] limit (0: the head only).
READ = (
    _COMMON
    + """
local epoch, seq, oldest, bytes = head(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[7])
oldest, bytes = trim(KEYS[2], KEYS[3], seq, oldest, bytes, tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
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
