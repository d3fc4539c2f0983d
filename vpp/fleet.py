"""Fleet state: the latest measurement of every asset, its availability, and aggregates.

The fleet is the telemetry sink of every adapter. `accept` runs on the event loop for every
reading, so it is a dict lookup, a few comparisons and an assignment; aggregates are computed
when asked.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from vpp.assets import static_limits
from vpp.clock import Clock
from vpp.config.schema import Park
from vpp.domain import Aggregate, AssetKind, AssetState, Availability, Measurement, PowerLimits
from vpp.metrics import Metrics

log = logging.getLogger(__name__)

FUTURE_TOLERANCE_S = 60.0  # device clocks drift; further ahead than this is a bad timestamp
FUTURE_TOLERANCE = timedelta(seconds=FUTURE_TOLERANCE_S)
_AHEAD = -FUTURE_TOLERANCE  # the age of a reading stamped at the future limit
RANGE_MARGIN = 1.5  # a reading this far beyond the nameplate range is not physical
PLAUSIBLE_TOLERANCE_KW = 1e-9  # PowerLimits.contains's default tolerance


@dataclass(slots=True)
class _Entry:
    asset_id: str
    enterprise_id: str
    kind: AssetKind
    plausible: PowerLimits
    last: Measurement | None = None
    online: bool = True
    degraded: bool = False
    # `plausible` as the bounds `PowerLimits.contains` compares with, for the accept hot path
    low_kw: float = -math.inf
    high_kw: float = math.inf

    def __post_init__(self) -> None:
        self.low_kw = self.plausible.min_kw - PLAUSIBLE_TOLERANCE_KW
        self.high_kw = self.plausible.max_kw + PLAUSIBLE_TOLERANCE_KW


@dataclass(slots=True)
class BurstLog:
    """Logs the first event of a kind, then at most one summary line per `window_s`."""

    window_s: float = 10.0
    _open: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def event(self, key: tuple[str, str], message: str) -> None:
        now = time.monotonic()
        started, count = self._open.get(key, (0.0, -1))
        if count < 0 or now - started >= self.window_s:
            if count > 0:
                log.warning(
                    "%s: %d more like this in the last %.0f s", key[0], count, self.window_s
                )
            log.warning("%s", message)
            self._open[key] = (now, 0)
        else:
            self._open[key] = (started, count + 1)


class Fleet:
    """Latest state of every enrolled asset; implements the adapters' TelemetrySink."""

    def __init__(
        self,
        park: Park,
        clock: Clock,
        stale_after_s: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.clock = clock
        self.stale_after = timedelta(
            seconds=stale_after_s if stale_after_s is not None else park.engine.telemetry_stale_s
        )
        self.metrics = metrics
        self._burst = BurstLog()
        self._entries: dict[str, _Entry] = {}
        for enterprise, asset in park.iter_assets():
            limits = static_limits(asset)
            span = max(abs(limits.min_kw), abs(limits.max_kw)) * RANGE_MARGIN + 1.0
            plausible = PowerLimits(-span if limits.min_kw < 0 else -1.0 - 0.1 * span, span)
            self._entries[asset.id] = _Entry(asset.id, enterprise.id, asset.kind, plausible)
        self._enterprises = sorted({e.enterprise_id for e in self._entries.values()})
        self.accepted = 0
        self.rejected = 0
        self.listeners: list[Callable[[list[Measurement]], None]] = []

    # --- TelemetrySink ---------------------------------------------------------------------

    def accept(self, adapter: str, measurements: Sequence[Measurement]) -> int:
        now = self.clock.now()
        future_limit = now + FUTURE_TOLERANCE
        oldest = now - self.stale_after
        accepted = 0
        kept: list[Measurement] | None = [] if self.listeners else None
        oldest_kept: datetime | None = None
        entries = self._entries
        for m in measurements:
            entry = entries.get(m.asset_id)
            at = m.timestamp
            # The common reading passes every check of `_check` here, inline (NaN and
            # infinities fail the range comparison); any other goes to `_check` for its reason.
            if not (
                entry is not None
                and at.tzinfo is not None
                and oldest <= at <= future_limit
                and (entry.last is None or at >= entry.last.timestamp)
                and entry.low_kw <= m.power_kw <= entry.high_kw
                and (m.soc_fraction is None or 0.0 <= m.soc_fraction <= 1.0)
                and (m.temperature_c is None or -100.0 <= m.temperature_c <= 150.0)
            ):
                reason = self._check(entry, m, future_limit, oldest)
                if reason is not None:
                    self.reject(adapter, reason, f"asset {m.asset_id!r} at {m.timestamp}")
                    continue
                assert entry is not None
            entry.last = m
            if not m.available:
                entry.online = False
            elif not entry.online:
                entry.online = True
            accepted += 1
            if kept is not None:
                kept.append(m)
            if oldest_kept is None or at < oldest_kept:
                oldest_kept = at
        self.accepted += accepted
        if self.metrics is not None and accepted:
            self.metrics.telemetry_received.labels(adapter).inc(accepted)
            if oldest_kept is not None:
                # one observation per batch: the delay of its oldest reading
                self.metrics.message_latency.labels(adapter).observe(
                    max((now - oldest_kept).total_seconds(), 0.0)
                )
        if kept:
            for listener in self.listeners:
                listener(kept)
        return accepted

    def reject(self, adapter: str, reason: str, detail: str) -> None:
        self.rejected += 1
        if self.metrics is not None:
            self.metrics.telemetry_rejected.labels(adapter, reason).inc()
        self._burst.event((adapter, reason), f"{adapter}: rejected telemetry ({reason}): {detail}")

    def set_available(self, asset_id: str, available: bool, at: datetime) -> None:
        entry = self._entries.get(asset_id)
        if entry is None:
            self.reject("status", "unknown_asset", f"availability of unknown asset {asset_id!r}")
            return
        entry.online = available

    # --- control-loop feedback -------------------------------------------------------------

    def mark_degraded(self, asset_id: str, degraded: bool = True) -> None:
        entry = self._entries[asset_id]
        if entry.degraded != degraded:
            log.info("asset %s %s", asset_id, "degraded" if degraded else "recovered")
        entry.degraded = degraded

    # --- queries ---------------------------------------------------------------------------

    def __contains__(self, asset_id: object) -> bool:
        return asset_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def asset_ids(self) -> list[str]:
        return list(self._entries)

    @property
    def enterprise_ids(self) -> list[str]:
        return list(self._enterprises)

    def availability(self, asset_id: str, now: datetime | None = None) -> Availability:
        return self._availability(self._entries[asset_id], now or self.clock.now())

    def state(self, asset_id: str, now: datetime | None = None) -> AssetState:
        entry = self._entries[asset_id]
        return AssetState(
            asset_id=entry.asset_id,
            enterprise_id=entry.enterprise_id,
            kind=entry.kind,
            availability=self._availability(entry, now or self.clock.now()),
            last=entry.last,
        )

    def states(self, enterprise_id: str | None = None) -> list[AssetState]:
        now = self.clock.now()
        return [self.state(e.asset_id, now) for e in self._select(enterprise_id)]

    def latest(self, asset_id: str) -> Measurement | None:
        """The last accepted measurement, however old."""
        return self._entries[asset_id].last

    def fresh(self, asset_id: str, now: datetime | None = None) -> Measurement | None:
        """The last measurement if it is fresh and the asset is online, else None."""
        entry = self._entries[asset_id]
        last = entry.last
        if last is None or not entry.online:
            return None
        # `_current`, inline: the control loop asks this of every asset every cycle
        age = (now or self.clock.now()) - last.timestamp
        if not _AHEAD <= age <= self.stale_after:
            return None
        return last

    def aggregate(self, enterprise_id: str | None = None) -> Aggregate:
        """Sum of fresh power over the park or one enterprise, with counts by availability."""
        if enterprise_id is not None and enterprise_id not in self._enterprises:
            raise KeyError(enterprise_id)
        now = self.clock.now()
        counts = dict.fromkeys(Availability, 0)
        by_kind: dict[AssetKind, float] = {}
        power = 0.0
        total = 0
        for entry in self._select(enterprise_id):
            total += 1
            availability = self._availability(entry, now)
            counts[availability] += 1
            if availability in (Availability.AVAILABLE, Availability.DEGRADED) and entry.last:
                power += entry.last.power_kw
                by_kind[entry.kind] = by_kind.get(entry.kind, 0.0) + entry.last.power_kw
        return Aggregate(
            power_kw=power,
            assets=total,
            available=counts[Availability.AVAILABLE],
            stale=counts[Availability.STALE],
            offline=counts[Availability.OFFLINE],
            unknown=counts[Availability.UNKNOWN],
            degraded=counts[Availability.DEGRADED],
            by_kind_kw=by_kind,
        )

    def update_gauges(self) -> None:
        if self.metrics is None:
            return
        aggregate = self.aggregate()
        self.metrics.park_power.set(aggregate.power_kw)
        for availability, count in (
            (Availability.AVAILABLE, aggregate.available),
            (Availability.STALE, aggregate.stale),
            (Availability.OFFLINE, aggregate.offline),
            (Availability.UNKNOWN, aggregate.unknown),
            (Availability.DEGRADED, aggregate.degraded),
        ):
            self.metrics.assets.labels(availability.value).set(count)

    # --- internals -------------------------------------------------------------------------

    def _select(self, enterprise_id: str | None) -> Iterable[_Entry]:
        if enterprise_id is None:
            return self._entries.values()
        return (e for e in self._entries.values() if e.enterprise_id == enterprise_id)

    def _availability(self, entry: _Entry, now: datetime) -> Availability:
        if not entry.online:
            return Availability.OFFLINE
        if entry.last is None:
            return Availability.UNKNOWN
        if not self._current(entry.last, now):
            return Availability.STALE
        if entry.degraded:
            return Availability.DEGRADED
        return Availability.AVAILABLE

    def _current(self, last: Measurement, now: datetime) -> bool:
        """Whether `last` is neither stale nor beyond the future tolerance of `now`.

        A reading further ahead than the tolerance was accepted before the clock stepped
        back (an NTP correction): it is no sign of life now.
        """
        return _AHEAD <= now - last.timestamp <= self.stale_after

    @staticmethod
    def _check(
        entry: _Entry | None, m: Measurement, future_limit: datetime, oldest: datetime
    ) -> str | None:
        if entry is None:
            return "unknown_asset"
        if m.timestamp.tzinfo is None:
            return "naive_timestamp"
        if m.timestamp > future_limit:
            return "future_timestamp"
        if m.timestamp < oldest:
            return "stale_timestamp"
        # A last reading beyond the future limit was accepted before the clock stepped back:
        # it orders nothing, or every reading would be refused until the clock caught up.
        if entry.last is not None and m.timestamp < entry.last.timestamp <= future_limit:
            return "out_of_order"
        if not math.isfinite(m.power_kw) or not entry.plausible.contains(m.power_kw):
            return "out_of_range"
        if m.soc_fraction is not None and not (0.0 <= m.soc_fraction <= 1.0):
            return "out_of_range"
        if m.temperature_c is not None and not (-100.0 <= m.temperature_c <= 150.0):
            return "out_of_range"
        return None
