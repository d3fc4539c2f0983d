"""Interval metering from telemetry: energy per asset per market interval.

Each accepted reading closes the span since the asset's previous reading, holding the previous
power over it (zero-order hold) and splitting the energy across interval boundaries; a gap
longer than `max_gap_s` is not filled. The result feeds tracking, settlement and carbon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import numpy as np

from dispatch.series import FloatArray, Horizon
from vpp.domain import Measurement


class IntervalMeter:
    """Energy (kWh) per asset and interval on a fixed grid of intervals from `origin`."""

    def __init__(
        self,
        enterprise_of: Mapping[str, str],
        origin: datetime,
        interval: timedelta,
        max_gap_s: float = 120.0,
    ) -> None:
        """`enterprise_of` maps every metered asset (in a fixed order) to its enterprise."""
        if origin.tzinfo is None:
            raise ValueError("IntervalMeter origin must be timezone-aware")
        self.asset_ids = list(enterprise_of)
        self.index = {a: i for i, a in enumerate(self.asset_ids)}
        self.enterprise_of = enterprise_of
        self.origin = origin
        self.interval = interval
        self.interval_s = interval.total_seconds()
        self.max_gap_s = max_gap_s
        self._energy: dict[int, FloatArray] = {}  # interval number -> kWh per asset
        self._last: list[tuple[float, float] | None] = [None] * len(self.asset_ids)
        self._origin_s = origin.timestamp()

    def offer(self, batch: Sequence[Measurement]) -> None:
        """Integrate accepted readings (a Fleet listener)."""
        for m in batch:
            i = self.index.get(m.asset_id)
            if i is None:
                continue
            t = m.timestamp.timestamp()
            last = self._last[i]
            self._last[i] = (t, m.power_kw)
            if last is None:
                continue
            t0, p0 = last
            if t <= t0 or t - t0 > self.max_gap_s:
                continue
            self._add(i, t0, t, p0)

    def _add(self, i: int, t0: float, t1: float, power_kw: float) -> None:
        while t0 < t1:
            k = int((t0 - self._origin_s) // self.interval_s)
            boundary = self._origin_s + (k + 1) * self.interval_s
            end = min(t1, boundary)
            energy = self._energy.get(k)
            if energy is None:
                energy = self._energy[k] = np.zeros(len(self.asset_ids))
            energy[i] += power_kw * (end - t0) / 3600.0
            t0 = end

    def interval_number(self, moment: datetime) -> int:
        return int((moment.timestamp() - self._origin_s) // self.interval_s)

    def interval_start(self, number: int) -> datetime:
        return self.origin + self.interval * number

    def energy_kwh(self, number: int) -> FloatArray:
        """Energy per asset in interval `number` (zeros where nothing was metered)."""
        return self._energy.get(number, np.zeros(len(self.asset_ids))).copy()

    def mean_power_kw(self, horizon: Horizon) -> dict[str, FloatArray]:
        """Mean power per asset per interval of `horizon` (which must lie on this grid)."""
        first = self.interval_number(horizon.start)
        hours = self.interval_s / 3600.0
        table = np.zeros((len(self.asset_ids), horizon.intervals))
        for k in range(horizon.intervals):
            energy = self._energy.get(first + k)
            if energy is not None:
                table[:, k] = energy / hours
        return {a: table[i] for i, a in enumerate(self.asset_ids)}

    def prune(self, before: datetime) -> None:
        """Forget intervals that ended before `before`."""
        limit = self.interval_number(before)
        for k in [k for k in self._energy if k < limit]:
            del self._energy[k]
