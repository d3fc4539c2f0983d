"""Clocks injected into everything that reads time, so tests and demos control it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A source of timezone-aware time and a matching sleep."""

    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class AcceleratedClock:
    """Time that starts at `start` and runs `speed` times faster than the wall clock."""

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            raise ValueError("AcceleratedClock start must be timezone-aware")
        if speed <= 0:
            raise ValueError("AcceleratedClock speed must be positive")
        self.start = start.astimezone(UTC)
        self.speed = speed
        self._origin = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._origin) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) / self.speed)


class ManualClock:
    """Time that moves only when a test calls `advance`; sleepers wake when their time comes."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._changed = asyncio.Condition()

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        wake = self._now + timedelta(seconds=max(seconds, 0.0))
        async with self._changed:
            await self._changed.wait_for(lambda: self._now >= wake)

    async def advance(self, seconds: float) -> None:
        """Move time forward and let every sleeper that is due run."""
        async with self._changed:
            self._now += timedelta(seconds=seconds)
            self._changed.notify_all()
        for _ in range(3):
            await asyncio.sleep(0)
