"""Admission control: how many requests a provider may have in flight.

First version: a per-provider concurrency bound with priorities (higher first).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["Limiter", "limiter"]


class _Gate:
    """A semaphore whose waiters are served highest priority first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.waiters: list[tuple[float, int, asyncio.Future]] = []
        self.counter = itertools.count()

    async def acquire(self, priority: float) -> None:
        if self.used < self.capacity and not self.waiters:
            self.used += 1
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiters, (-priority, next(self.counter), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()
            raise

    def release(self) -> None:
        self.used -= 1
        while self.waiters and self.used < self.capacity:
            _, _, fut = heapq.heappop(self.waiters)
            if not fut.done():
                self.used += 1
                fut.set_result(None)


class Limiter:
    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}

    def _gate(self, provider) -> _Gate:
        gate = self._gates.get(provider.name)
        if gate is None:
            gate = self._gates[provider.name] = _Gate(provider.default_concurrency)
        return gate

    async def acquire(self, provider, tokens: int, priority: float = 0.0) -> None:
        await self._gate(provider).acquire(priority)

    def release(self, provider, tokens_used: int = 0) -> None:
        self._gate(provider).release()

    def observe(self, provider, headers: dict[str, str]) -> None:
        """Learn limits from response headers (x-ratelimit-*, anthropic-ratelimit-*)."""

    def throttled(self, provider, retry_after: float | None) -> None:
        """A 429: slow the provider's whole bucket down."""


limiter = Limiter()
