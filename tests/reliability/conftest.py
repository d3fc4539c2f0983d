"""What the reliability suite shares: a generated park, the limit guard, waits and databases.

`LimitGuard` wraps an adapter and checks every setpoint that reaches it against the
invariants the issue names: inside the asset's static range, inside its dynamic limits for
the state it was in when the setpoint was issued, finite, and not expired. The tests assert
that its list of violations stays empty while they break things around the engine.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from adapters.base import Adapter, AdapterHealth, TelemetrySink
from vpp.assets import static_limits
from vpp.config.schema import Park, PvAsset
from vpp.domain import Measurement, Setpoint, SetpointAck
from vpp.fleet import Fleet
from vpp.limits import Blocked, asset_limits

ROOT = Path(__file__).resolve().parents[2]
SMALL_PARK = ROOT / "tests/fixtures/small_park.yaml"
MARKETS = ROOT / "config/markets"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
LIMIT_TOLERANCE_KW = 1e-6


async def eventually(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> None:
    """Wait until `check()` holds; TimeoutError after `timeout_s` of wall time."""
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110  (polls state other tasks own)
            await asyncio.sleep(poll_s)


@dataclass(frozen=True, slots=True)
class Violation:
    """A setpoint that reached a device although it broke an invariant."""

    setpoint: Setpoint
    rule: str
    detail: str


@dataclass(slots=True)
class GuardStats:
    sent: int = 0
    dynamic_checked: int = 0
    violations: list[Violation] = field(default_factory=list)


class RecordingFleet(Fleet):
    """A fleet that remembers, per asset, the reading it last handed out as fresh and when.

    The control loop reads every asset through `fresh(asset_id, now)` once per cycle, so
    this is exactly the state each setpoint was computed from.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed_out: dict[str, tuple[datetime, Measurement | None]] = {}

    def fresh(self, asset_id: str, now: datetime | None = None) -> Measurement | None:
        moment = now or self.clock.now()
        reading = super().fresh(asset_id, moment)
        self.handed_out[asset_id] = (moment, reading)
        return reading


class Wrapped(Adapter):
    """An adapter that is `inner` in all but what a subclass changes (its sends)."""

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def asset_ids(self) -> frozenset[str]:
        return self.inner.asset_ids

    async def run(self, sink: TelemetrySink) -> None:
        await self.inner.run(sink)

    def health(self) -> AdapterHealth:
        return self.inner.health()

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        return await self.inner.send(setpoint)


class LimitGuard(Wrapped):
    """Passes setpoints to `inner` after checking each against the park's limits.

    The dynamic check recomputes the asset's limits (`vpp.limits.asset_limits`) from the
    reading the control loop saw in the cycle that issued the setpoint (`RecordingFleet`).
    PV is checked against its static range only: its dynamic upper bound depends on the
    controller's estimate of the available sun.
    """

    def __init__(self, inner: Adapter, park: Park, fleet: RecordingFleet) -> None:
        super().__init__(inner)
        self.park = park
        self.fleet = fleet
        self.stats = GuardStats()
        self._assets = {a.id: a for _, a in park.iter_assets()}

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        self.check(setpoint, self.fleet.clock.now())
        return await self.inner.send(setpoint)

    def check(self, setpoint: Setpoint, now: datetime) -> None:
        self.stats.sent += 1
        asset = self._assets.get(setpoint.asset_id)
        if asset is None:
            self._violate(setpoint, "unknown_asset", setpoint.asset_id)
            return
        power = setpoint.power_kw
        if not math.isfinite(power):
            self._violate(setpoint, "non_finite", repr(power))
            return
        if setpoint.expired(now):
            self._violate(setpoint, "expired", f"sent at {now}, valid until {setpoint.valid_until}")
        static = static_limits(asset)
        if not static.contains(power, LIMIT_TOLERANCE_KW):
            self._violate(setpoint, "static", f"{power} outside {static}")
            return
        if isinstance(asset, PvAsset):
            return
        at, seen = self.fleet.handed_out.get(asset.id, (None, None))
        if at != setpoint.issued_at or seen is None:
            return  # a newer cycle has run since, or the asset was stale (fallback value)
        engine = self.park.engine
        limits, blocked = asset_limits(
            asset,
            seen,
            setpoint.issued_at,
            self.park.tz,
            horizon_s=engine.setpoint_validity_s,
            period_s=engine.control_period_s,
        )
        if blocked is not Blocked.NO:
            return  # not steered this cycle: only the static range applies
        self.stats.dynamic_checked += 1
        if not limits.contains(power, LIMIT_TOLERANCE_KW):
            self._violate(setpoint, "dynamic", f"{power} outside {limits} (reading {seen})")

    def _violate(self, setpoint: Setpoint, rule: str, detail: str) -> None:
        self.stats.violations.append(Violation(setpoint, rule, detail))
