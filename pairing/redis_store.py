"""Pairing state in Redis, shared by every instance; each racy step is one Lua script.

Key names hold only HMACs, random pairing ids, book_refs and device ids; the raw
book_id is a field of the session hash and nothing else. Physical TTLs match the
logical ones, so a session is gone from Redis 10 minutes after verify even if no
instance is running; the `due` index keeps just enough (pairing id, book_ref,
joiner) for the sweeper to remove an unconfirmed joiner. Some scripts touch keys
they derive from a pairing id, so this wants one Redis (with replicas if you like),
not Redis Cluster.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, cast

from pairing.store import ClaimResult, Decision, DepositResult, Due, Session, Side, StoreDown

PREFIX = "hp:pair:"
DUE_KEY = PREFIX + "due"
# The book and device indexes only point at sessions; a day outlives any session.
INDEX_TTL_MS = 24 * 3600 * 1000
DUE_BATCH = 100

_CREATE = """
local c = redis.call('HGET', KEYS[1], 'exp')
if c and tonumber(c) + tonumber(ARGV[3]) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'pid', ARGV[7], 'exp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[2], ARGV[5])
for i = 3, 4 do
  redis.call('SADD', KEYS[i], ARGV[7])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[6]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[6])
  end
end
return 1
"""

_CLAIM = """
local v = redis.call('HMGET', KEYS[1], 'pid', 'exp')
if not v[1] then return {'invalid'} end
local now = tonumber(ARGV[1])
local exp = tonumber(v[2])
if now >= exp then
  if now >= exp + tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[1])
    return {'invalid'}
  end
  return {'expired'}
end
redis.call('DEL', KEYS[1])
return {'ok', v[1]}
"""

_ATTACH = """
local st = redis.call('HMGET', KEYS[1], 'status', 'exp')
if st[1] ~= 'waiting' or tonumber(st[2]) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'matched', 'exp', ARGV[2], 'joiner', ARGV[4],
  'joiner_pk', ARGV[5], 'due', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
for i = 2, 3 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[6])
redis.call('SADD', KEYS[5], ARGV[7])
if redis.call('PTTL', KEYS[5]) < tonumber(ARGV[8]) then redis.call('PEXPIRE', KEYS[5], ARGV[8]) end
return 1
"""

_DEPOSIT = """
local st = redis.call('HMGET', KEYS[1], 'status', 'exp')
if not st[1] or tonumber(st[2]) <= tonumber(ARGV[1]) then return 'gone' end
if st[1] == 'rejected' then return 'closed' end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[3]) then return 'full' end
redis.call('RPUSH', KEYS[2], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 'ok'
"""

_DECIDE = """
local st = redis.call('HMGET', KEYS[1], 'status', 'exp', 'due')
if not st[1] or tonumber(st[2]) <= tonumber(ARGV[1]) then return {'gone'} end
if st[1] == 'waiting' then return {'waiting', st[1]} end
if st[1] ~= 'matched' then return {'already', st[1]} end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if st[3] then redis.call('ZREM', KEYS[2], st[3]) end
return {'decided', ARGV[2]}
"""

_DROP = """
local n = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[4], ARGV[2]) end
if redis.call('HGET', KEYS[5], 'pid') == ARGV[1] then redis.call('DEL', KEYS[5]) end
return n
"""

# Each due member is removed by exactly one caller: ZREM inside the script decides.
_TAKE_DUE = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
  tonumber(ARGV[2]))
local out = {}
for _, m in ipairs(members) do
  if redis.call('ZREM', KEYS[1], m) == 1 then
    local s = ARGV[3] .. 's:' .. string.match(m, '^([^|]+)|')
    redis.call('DEL', s, s .. ':g', s .. ':j')
    table.insert(out, m)
  end
end
return out
"""

_RESERVE = """
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
"""

_RELEASE = """
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _session_key(pairing_id: str) -> str:
    return PREFIX + "s:" + pairing_id


def _due_member(session: Session) -> str:
    return f"{session.pairing_id}|{session.book_ref}|{session.joiner or ''}"


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    try:
        yield
    except StoreDown:
        raise
    except Exception as exc:  # redis errors differ by cause; all mean "not answering"
        if type(exc).__module__.startswith("redis"):
            raise StoreDown(type(exc).__name__) from exc
        raise


class RedisPairingStore:
    def __init__(self, client: Any, tombstone_s: int) -> None:
        self.client = client
        self.tombstone_s = tombstone_s
        reg = client.register_script
        self._create = reg(_CREATE)
        self._claim = reg(_CLAIM)
        self._attach = reg(_ATTACH)
        self._deposit = reg(_DEPOSIT)
        self._decide = reg(_DECIDE)
        self._drop = reg(_DROP)
        self._take_due = reg(_TAKE_DUE)
        self._reserve = reg(_RESERVE)
        self._release = reg(_RELEASE)

    async def create(self, session: Session, code_expires_at: float, now: float) -> bool:
        s = session
        fields = [
            "pid", s.pairing_id, "book_id", s.book_id, "book_ref", s.book_ref,
            "gen", s.generator, "gen_pk", s.generator_pk, "code", s.code_mac,
            "status", s.status, "exp", repr(s.expires_at),
        ]  # fmt: skip
        keys = [
            PREFIX + "code:" + s.code_mac,
            _session_key(s.pairing_id),
            PREFIX + "book:" + s.book_ref,
            PREFIX + "dev:" + s.generator,
        ]
        args = [
            repr(now),
            repr(code_expires_at),
            self.tombstone_s,
            _ms(code_expires_at - now + self.tombstone_s),
            _ms(s.expires_at - now),
            INDEX_TTL_MS,
            s.pairing_id,
            *fields,
        ]
        with _guard():
            return bool(await self._create(keys=keys, args=args))

    async def claim(self, code_mac: str, now: float) -> tuple[ClaimResult, str | None]:
        with _guard():
            out = await self._claim(
                keys=[PREFIX + "code:" + code_mac], args=[repr(now), self.tombstone_s]
            )
        result = cast(ClaimResult, _s(out[0]))
        return result, (_s(out[1]) if len(out) > 1 else None)

    async def get(self, pairing_id: str, now: float) -> Session | None:
        with _guard():
            raw = await self.client.hgetall(_session_key(pairing_id))
        if not raw:
            return None
        f = {_s(k): _s(v) for k, v in raw.items()}
        if "pid" not in f or float(f["exp"]) <= now:
            return None
        return Session(
            pairing_id=f["pid"],
            book_id=f["book_id"],
            book_ref=f["book_ref"],
            generator=f["gen"],
            generator_pk=f["gen_pk"],
            code_mac=f["code"],
            status=f["status"],
            expires_at=float(f["exp"]),
            joiner=f.get("joiner"),
            joiner_pk=f.get("joiner_pk"),
        )

    async def attach(self, session: Session, now: float) -> bool:
        key = _session_key(session.pairing_id)
        keys = [key, key + ":g", key + ":j", DUE_KEY, PREFIX + "dev:" + str(session.joiner)]
        args = [
            repr(now),
            repr(session.expires_at),
            _ms(session.expires_at - now),
            str(session.joiner),
            str(session.joiner_pk),
            _due_member(session),
            session.pairing_id,
            INDEX_TTL_MS,
        ]
        with _guard():
            return bool(await self._attach(keys=keys, args=args))

    async def deposit(
        self, pairing_id: str, side: Side, payload: str, max_per_side: int, now: float
    ) -> DepositResult:
        key = _session_key(pairing_id)
        with _guard():
            out = await self._deposit(
                keys=[key, f"{key}:{side}"], args=[repr(now), payload, max_per_side]
            )
        return cast(DepositResult, _s(out))

    async def payloads(self, pairing_id: str, side: Side) -> list[str]:
        with _guard():
            items = await self.client.lrange(f"{_session_key(pairing_id)}:{side}", 0, -1)
        return [_s(i) for i in items]

    async def decide(self, pairing_id: str, status: str, now: float) -> Decision:
        with _guard():
            out = await self._decide(
                keys=[_session_key(pairing_id), DUE_KEY], args=[repr(now), status]
            )
        outcome = _s(out[0])
        if outcome == "gone":
            return Decision("gone", None, None)
        session = await self.get(pairing_id, now)
        return Decision(outcome, _s(out[1]), session)  # type: ignore[arg-type]

    async def drop(self, pairing_id: str) -> Session | None:
        session = await self.get(pairing_id, float("-inf"))
        if session is None:
            return None
        key = _session_key(pairing_id)
        member = _due_member(session) if session.joiner else ""
        keys = [key, key + ":g", key + ":j", DUE_KEY, PREFIX + "code:" + session.code_mac]
        with _guard():
            await self._drop(keys=keys, args=[pairing_id, member])
        return session

    async def of_book(self, book_ref: str) -> list[str]:
        with _guard():
            return [_s(m) for m in await self.client.smembers(PREFIX + "book:" + book_ref)]

    async def of_device(self, device_id: str) -> list[str]:
        with _guard():
            return [_s(m) for m in await self.client.smembers(PREFIX + "dev:" + device_id)]

    async def take_due(self, now: float) -> list[Due]:
        with _guard():
            out = await self._take_due(keys=[DUE_KEY], args=[repr(now), DUE_BATCH, PREFIX])
        due = []
        for member in out:
            pairing_id, book_ref, joiner = _s(member).split("|")
            due.append(Due(pairing_id, book_ref, joiner))
        return due

    async def reserve(self, key: str, ttl_s: int) -> int:
        with _guard():
            return int(await self._reserve(keys=[PREFIX + "busy:" + key], args=[ttl_s * 1000]))

    async def release(self, key: str) -> None:
        with _guard():
            await self._release(keys=[PREFIX + "busy:" + key], args=[])

    async def ping(self) -> None:
        with _guard():
            await self.client.ping()

    async def close(self) -> None:
        return None  # the client belongs to the app's shared services
