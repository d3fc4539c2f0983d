"""Watching the engine from a test: wait for state other tasks own, read rejection counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vpp.metrics import Metrics


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `predicate` until it holds; TimeoutError after `timeout_s`.

    For state owned by other tasks (adapters, the fleet, emulators, openleadr's polling) that
    offers no event to wait on.
    """
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def rejected(metrics: Metrics, adapter: str, reason: str) -> float:
    """Telemetry the fleet refused from `adapter` for `reason` so far."""
    value = metrics.registry.get_sample_value(
        "vpp_telemetry_rejected_total", {"adapter": adapter, "reason": reason}
    )
    return value or 0.0
