"""RATE_LIMIT_WS_OPS without a limiter round trip per op.

Each socket reserves a block of its device's op budget at once (the limiter's hit with
`cost = block`) and spends it locally; only when a block is refused does it fall back
to counting op by op, so the limit stays exact at its edge. The price: a socket that
closes with part of a block unspent has counted up to `block - 1` ops it never sent.
The block is 1/20 of the limit (at most 50), so small limits are counted one by one.
When the limit store is down, relay traffic goes on (docs/CONTRACT.md §6).
"""

from __future__ import annotations

import logging

from infra.errors import ApiError
from infra.metrics import RATE_LIMITED
from infra.ratelimit import LimitStoreDown, RateLimiter

log = logging.getLogger("homepocket.relay")
NAME = "RATE_LIMIT_WS_OPS"
MAX_BLOCK = 50


class OpBudget:
    def __init__(self, limiter: RateLimiter, device_id: str) -> None:
        self.limiter = limiter
        self.device_id = device_id
        item = limiter.item(NAME)
        self.enabled = item is not None
        self.block = max(1, min(MAX_BLOCK, item.amount // 20)) if item is not None else 0
        self.left = 0

    def spend_now(self) -> bool:
        """Spend one op of the block in hand; False when there is none (ask `spend`)."""
        if not self.enabled:
            return True
        if self.left > 0:
            self.left -= 1
            return True
        return False

    def unspend(self) -> None:
        """Give back what `spend_now` took: the op was not sent after all."""
        if self.enabled:
            self.left += 1

    async def spend(self) -> ApiError | None:
        """None when the op may go; else the RATE_LIMIT_EXCEEDED error to send."""
        if self.spend_now():
            return None
        try:
            verdict = await self.limiter.hit(NAME, self.device_id, cost=self.block, counts=False)
            if verdict is not None and not verdict.allowed and self.block > 1:
                verdict = await self.limiter.hit(NAME, self.device_id, cost=1, counts=False)
                if verdict is not None and verdict.allowed:
                    return None
            elif verdict is not None and verdict.allowed:
                self.left = self.block - 1
        except LimitStoreDown:
            log.warning("rate-limit store unreachable", extra={"limit": NAME})
            return None
        if verdict is not None and not verdict.allowed:
            RATE_LIMITED.labels(NAME).inc()
            return verdict.error()
        return None
