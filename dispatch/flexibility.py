"""Flexibility envelopes: how far each enterprise and the park can move from baseline, how long.

An asset's flexibility per interval is a power headroom above (up: draw more) and below (down:
draw less) its baseline, an energy budget that a sustained move uses up (battery state of
charge, a thermal band, EV energy still deferrable) and, for curtailment, a longest duration.
From those, `sustained_*_kw[k, d - 1]` is the largest constant move that can be held for d
intervals from interval k; groups add their assets and then respect their connection limits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dispatch.problem import DispatchProblem
from dispatch.series import FloatArray, Horizon
from vpp.config.schema import Park

IntArray = npt.NDArray[np.int64]
PARK = "park"  # group id of the whole park in `ParkEnvelope.groups`
_TOLERANCE_KW = 1e-6


@dataclass(frozen=True, slots=True)
class AssetFlexibility:
    """One asset's room to move per interval, relative to its baseline (all kW >= 0).

    `up_energy_kwh[k]` / `down_energy_kwh[k]` is the grid-side energy a move starting at k may
    use before a state limit is hit (inf: unlimited). `max_intervals` caps how long a move may
    last (curtailment duration); `down_cost_per_mwh` is what a reduction costs the owner.
    """

    asset_id: str
    enterprise_id: str
    up_kw: FloatArray
    down_kw: FloatArray
    up_energy_kwh: FloatArray
    down_energy_kwh: FloatArray
    max_intervals: int | None = None
    down_cost_per_mwh: float = 0.0
    notice_min: float = 0.0


@dataclass(frozen=True, slots=True)
class Envelope:
    """Flexibility of a group (an enterprise or the park) per interval.

    `baseline_kw` is the group's net power without intervention; `up_kw` / `down_kw` the
    largest one-interval move; `up_intervals` / `down_intervals` how many intervals from k that
    full move can be held. `sustained_up_kw[k, d - 1]` / `sustained_down_kw[k, d - 1]` give the
    largest move held for d intervals from k (0 where the window leaves the horizon).
    """

    group_id: str
    horizon: Horizon
    baseline_kw: FloatArray
    sustained_up_kw: FloatArray
    sustained_down_kw: FloatArray

    @property
    def up_kw(self) -> FloatArray:
        return np.asarray(self.sustained_up_kw[:, 0], dtype=float)

    @property
    def down_kw(self) -> FloatArray:
        return np.asarray(self.sustained_down_kw[:, 0], dtype=float)

    @property
    def up_intervals(self) -> IntArray:
        return _held_for(self.sustained_up_kw)

    @property
    def down_intervals(self) -> IntArray:
        return _held_for(self.sustained_down_kw)

    def up_hours(self) -> FloatArray:
        return np.asarray(self.up_intervals * self.horizon.hours, dtype=float)

    def down_hours(self) -> FloatArray:
        return np.asarray(self.down_intervals * self.horizon.hours, dtype=float)

    def down_for(self, intervals: int) -> FloatArray:
        """Largest reduction held for `intervals` intervals from each k (0 beyond the horizon)."""
        return _column(self.sustained_down_kw, intervals)

    def up_for(self, intervals: int) -> FloatArray:
        """Largest increase held for `intervals` intervals from each k (0 beyond the horizon)."""
        return _column(self.sustained_up_kw, intervals)


@dataclass(frozen=True, slots=True)
class GroupLimits:
    """Connection limits of a group: import (draw) and export, kW >= 0."""

    import_kw: float
    export_kw: float


@dataclass(frozen=True, slots=True)
class ParkEnvelope:
    """Envelopes of the park (`groups[PARK]`) and of every enterprise, with their inputs.

    The inputs (per-asset flexibility, enterprise baselines, connection limits) are kept so
    that an envelope of a subset of assets can be recomputed (`combine`), e.g. for DR offers
    that may only use assets below a price.
    """

    horizon: Horizon
    groups: Mapping[str, Envelope]
    assets: tuple[AssetFlexibility, ...]
    baselines_kw: Mapping[str, FloatArray]
    enterprise_limits: Mapping[str, GroupLimits]
    park_limits: GroupLimits

    @property
    def park(self) -> Envelope:
        return self.groups[PARK]

    def subset(self, assets: Sequence[AssetFlexibility]) -> ParkEnvelope:
        """The envelope the park would have with only `assets` moving."""
        return combine(
            self.horizon, assets, self.baselines_kw, self.enterprise_limits, self.park_limits
        )

    def park_held_kw(
        self, intervals: int, *, up: bool, assets: Sequence[AssetFlexibility] | None = None
    ) -> FloatArray:
        """Largest park move held for `intervals` from each k, using only `assets` (default:
        all): the same numbers as `subset(assets).park.up_for/down_for`, computed for that one
        duration only (cheap enough to repeat for many subsets)."""
        count = self.horizon.intervals
        if intervals < 1:
            raise ValueError(f"a move lasts at least one interval, not {intervals}")
        if intervals > count:
            return np.zeros(count)
        chosen = self.assets if assets is None else assets
        park = np.zeros(count)
        park_baseline = np.zeros(count)
        for enterprise_id, limits in self.enterprise_limits.items():
            baseline = self.baselines_kw.get(enterprise_id, np.zeros(count))
            park_baseline = park_baseline + baseline
            total = np.zeros(count)
            for asset in chosen:
                if asset.enterprise_id == enterprise_id:
                    total += held_kw(asset, intervals, self.horizon.hours, up=up)
            room = limits.import_kw - baseline if up else baseline + limits.export_kw
            park += np.minimum(total, _window_min(np.maximum(room, 0.0), intervals))
        limits = self.park_limits
        room = limits.import_kw - park_baseline if up else park_baseline + limits.export_kw
        return np.asarray(np.minimum(park, _window_min(np.maximum(room, 0.0), intervals)))


def _column(matrix: FloatArray, intervals: int) -> FloatArray:
    if intervals < 1:
        raise ValueError(f"a move lasts at least one interval, not {intervals}")
    if intervals > matrix.shape[1]:
        return np.zeros(matrix.shape[0])
    return np.asarray(matrix[:, intervals - 1], dtype=float)


def _held_for(matrix: FloatArray) -> IntArray:
    """Per row: how many leading columns keep (almost) the first column's value."""
    if matrix.shape[1] == 0:
        return np.zeros(matrix.shape[0], dtype=np.int64)
    first = matrix[:, :1]
    holds = (matrix >= first - np.maximum(_TOLERANCE_KW, 1e-9 * np.abs(first))) & (first > 0)
    # Count the leading run of True per row: argmin finds the first False.
    leading = np.where(holds.all(axis=1), matrix.shape[1], np.argmin(holds, axis=1))
    return np.asarray(leading, dtype=np.int64)


def _window_min(values: FloatArray, intervals: int) -> FloatArray:
    """out[k] = min(values[k : k + intervals]); 0 where the window leaves the array."""
    count = len(values)
    out = np.zeros(count)
    valid = count - intervals + 1
    if valid <= 0:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(values, dtype=float), intervals)
    out[:valid] = windows.min(axis=1)
    return out


def held_kw(asset: AssetFlexibility, intervals: int, hours: float, *, up: bool) -> FloatArray:
    """One column of `sustained_kw` for one asset: the move held for `intervals` from each k."""
    count = len(asset.up_kw)
    if asset.max_intervals is not None and intervals > asset.max_intervals:
        return np.zeros(count)
    headroom = asset.up_kw if up else asset.down_kw
    energy = asset.up_energy_kwh if up else asset.down_energy_kwh
    by_energy = np.asarray(energy, dtype=float) / (intervals * hours)
    held = np.minimum(_window_min(headroom, intervals), by_energy)
    return np.asarray(np.maximum(held, 0.0), dtype=float)


def sustained_kw(
    headroom_kw: FloatArray,
    energy_kwh: FloatArray,
    hours: float,
    max_intervals: int | None = None,
) -> FloatArray:
    """Matrix [k, d - 1]: the largest constant move held over intervals k .. k + d - 1.

    Bounded by the smallest headroom in the window and by the energy budget at k spread over
    the window (d × hours); windows leaving the horizon or longer than `max_intervals` give 0.
    """
    count = len(headroom_kw)
    out = np.zeros((count, count))
    window_min = np.asarray(headroom_kw, dtype=float).copy()
    limit = count if max_intervals is None else min(count, max_intervals)
    for d in range(1, limit + 1):
        if d > 1:
            # min over k .. k + d - 1 from the min over k .. k + d - 2 and the new element.
            window_min[: count - d + 1] = np.minimum(
                window_min[: count - d + 1], headroom_kw[d - 1 :]
            )
        valid = count - d + 1
        with np.errstate(invalid="ignore"):
            by_energy = np.asarray(energy_kwh[:valid], dtype=float) / (d * hours)
        out[:valid, d - 1] = np.maximum(np.minimum(window_min[:valid], by_energy), 0.0)
    return out


def _group_limit(sustained: FloatArray, room_kw: FloatArray) -> FloatArray:
    """Cap a group's sustained moves by the smallest connection room in each window."""
    count = len(room_kw)
    capped = sustained.copy()
    window_min = np.maximum(np.asarray(room_kw, dtype=float), 0.0)
    for d in range(1, count + 1):
        if d > 1:
            window_min[: count - d + 1] = np.minimum(
                window_min[: count - d + 1], np.maximum(room_kw[d - 1 :], 0.0)
            )
        valid = count - d + 1
        capped[:valid, d - 1] = np.minimum(capped[:valid, d - 1], window_min[:valid])
    return capped


def envelope_of(
    group_id: str,
    horizon: Horizon,
    assets: Iterable[AssetFlexibility],
    baseline_kw: FloatArray,
    limits: GroupLimits | None,
) -> Envelope:
    """Add the assets' sustained moves and cap them by the group's connection limits."""
    up = np.zeros((horizon.intervals, horizon.intervals))
    down = np.zeros((horizon.intervals, horizon.intervals))
    for asset in assets:
        up += sustained_kw(asset.up_kw, asset.up_energy_kwh, horizon.hours, asset.max_intervals)
        down += sustained_kw(
            asset.down_kw, asset.down_energy_kwh, horizon.hours, asset.max_intervals
        )
    if limits is not None:
        up = _group_limit(up, limits.import_kw - baseline_kw)
        down = _group_limit(down, baseline_kw + limits.export_kw)
    return Envelope(group_id, horizon, np.asarray(baseline_kw, dtype=float), up, down)


def combine(
    horizon: Horizon,
    assets: Sequence[AssetFlexibility],
    baselines_kw: Mapping[str, FloatArray],
    enterprise_limits: Mapping[str, GroupLimits],
    park_limits: GroupLimits,
) -> ParkEnvelope:
    """Envelopes of every enterprise and of the park from per-asset flexibility.

    `baselines_kw` maps enterprise id to its baseline net power. The park's moves are the sum
    of its enterprises' (each already within its own connection) capped by the park's grid
    connection.
    """
    groups: dict[str, Envelope] = {}
    for enterprise_id, limits in enterprise_limits.items():
        members = [a for a in assets if a.enterprise_id == enterprise_id]
        baseline = baselines_kw.get(enterprise_id, np.zeros(horizon.intervals))
        groups[enterprise_id] = envelope_of(enterprise_id, horizon, members, baseline, limits)
    park_baseline = np.zeros(horizon.intervals)
    up = np.zeros((horizon.intervals, horizon.intervals))
    down = np.zeros((horizon.intervals, horizon.intervals))
    for envelope in groups.values():
        park_baseline = park_baseline + envelope.baseline_kw
        up = up + envelope.sustained_up_kw
        down = down + envelope.sustained_down_kw
    up = _group_limit(up, park_limits.import_kw - park_baseline)
    down = _group_limit(down, park_baseline + park_limits.export_kw)
    groups[PARK] = Envelope(PARK, horizon, park_baseline, up, down)
    return ParkEnvelope(
        horizon,
        groups,
        tuple(assets),
        dict(baselines_kw),
        dict(enterprise_limits),
        park_limits,
    )


# --- from the dispatch problem ----------------------------------------------------------------


def _rows(values: FloatArray) -> list[FloatArray]:
    return [np.asarray(row, dtype=float) for row in values]


def _unlimited(count: int) -> FloatArray:
    return np.full(count, np.inf)


def _suffix_sum(values: FloatArray) -> FloatArray:
    """s[k] = values[k] + values[k + 1] + ... (per row for 2-D input)."""
    return np.asarray(np.flip(np.cumsum(np.flip(values, axis=-1), axis=-1), axis=-1), dtype=float)


def ev_own_kw(problem: DispatchProblem) -> FloatArray:
    """(sessions, T): each session charging flat out from plug-in until its energy is in."""
    ev = problem.ev
    hours = problem.horizon.hours
    own = np.zeros_like(ev.session_max_kw)
    for s in range(len(ev.session_energy_kwh)):
        left = float(ev.session_energy_kwh[s])
        for k in np.flatnonzero(ev.session_max_kw[s] > 0):
            if left <= 1e-9:
                break
            own[s, k] = min(float(ev.session_max_kw[s, k]), left / hours)
            left -= own[s, k] * hours
    # A depot that follows its own control has its own profile as both bounds.
    return np.asarray(np.maximum(own, ev.session_min_kw), dtype=float)


def thermal_holding_kw(problem: DispatchProblem) -> FloatArray:
    """(n, T): electric power that holds each thermal load at its initial temperature."""
    th = problem.thermal
    theta = th.temp_initial_c[:, None]
    heat = th.loss_kw_per_k[:, None] * (th.ambient_c - theta)
    heat = np.where(th.heating[:, None], -heat - th.gain_kw[:, None], heat + th.gain_kw[:, None])
    return np.asarray(np.clip(heat / th.cop[:, None], th.power_min_kw, th.power_max_kw))


def asset_flexibility(
    problem: DispatchProblem, notice_min: Mapping[str, float] | None = None
) -> tuple[list[AssetFlexibility], dict[str, FloatArray]]:
    """Per-asset flexibility and per-asset baseline power, read from the problem's arrays.

    Baselines: batteries and generators idle, PV at its available output, loads at their
    baselines (thermal: holding the initial temperature), EV sessions charging flat out from
    plug-in, shiftable loads at their default runs. Where an asset may not be dispatched the
    problem's bounds already pin it, so its headroom is zero there.
    """
    notice_min = notice_min or {}
    t = problem.intervals
    hours = problem.horizon.hours
    ents = problem.enterprise_ids
    zeros = np.zeros(t)
    out: list[AssetFlexibility] = []
    baselines: dict[str, FloatArray] = {}

    def add(
        asset_id: str,
        enterprise: int,
        baseline: FloatArray,
        up: FloatArray,
        down: FloatArray,
        up_energy: FloatArray,
        down_energy: FloatArray,
        *,
        max_intervals: int | None = None,
        cost: float = 0.0,
    ) -> None:
        baselines[asset_id] = np.asarray(baseline, dtype=float)
        out.append(
            AssetFlexibility(
                asset_id,
                ents[enterprise],
                np.maximum(np.asarray(up, dtype=float), 0.0),
                np.maximum(np.asarray(down, dtype=float), 0.0),
                np.asarray(up_energy, dtype=float),
                np.asarray(down_energy, dtype=float),
                max_intervals,
                float(cost),
                float(notice_min.get(asset_id, 0.0)),
            )
        )

    b = problem.batteries
    for i, asset_id in enumerate(b.asset_ids):
        # Idle at baseline, so the stored energy stays where it starts.
        room_up = (b.energy_max_kwh[i] - b.energy_initial_kwh[i]) / b.charge_efficiency[i]
        room_down = (b.energy_initial_kwh[i] - b.energy_min_kwh[i]) * b.discharge_efficiency[i]
        add(
            asset_id,
            int(b.enterprise_index[i]),
            zeros,
            b.charge_max_kw[i],
            b.discharge_max_kw[i],
            np.full(t, room_up),
            np.full(t, room_down),
            cost=float(b.degradation_cost_per_mwh[i]),
        )

    pv = problem.pv
    for i, asset_id in enumerate(pv.asset_ids):
        generation = pv.generation_kw[i]
        add(
            asset_id,
            int(pv.enterprise_index[i]),
            -generation,
            np.where(pv.curtailable[i], generation, 0.0),
            zeros,
            _unlimited(t),
            _unlimited(t),
        )

    c = problem.curtailable
    for i, asset_id in enumerate(c.asset_ids):
        add(
            asset_id,
            int(c.enterprise_index[i]),
            c.baseline_kw[i],
            zeros,
            c.reduction_max_kw[i],
            _unlimited(t),
            _unlimited(t),
            max_intervals=int(c.max_duration_intervals[i]),
            cost=float(c.cost_per_mwh[i]),
        )

    s = problem.shiftable
    for i, asset_id in enumerate(s.asset_ids):
        baseline = s.baseline_kw[i]
        if s.fixed[i]:
            add(asset_id, int(s.enterprise_index[i]), baseline, zeros, zeros, zeros, zeros)
            continue
        # A run can be pulled into an idle allowed interval (for one run's energy) or moved
        # away from where it would run.
        run_kwh = float(np.sum(s.run_profile_kw[i]) * hours) if s.run_profile_kw else 0.0
        if s.interruptible[i]:
            run_kwh = float(s.energy_kwh[i])
        up = np.where(s.allowed[i], np.maximum(s.power_kw[i] - baseline, 0.0), 0.0)
        add(
            asset_id,
            int(s.enterprise_index[i]),
            baseline,
            up,
            np.where(s.allowed[i], baseline, 0.0),
            np.full(t, run_kwh),
            _unlimited(t),
        )

    th = problem.thermal
    holding = thermal_holding_kw(problem) if th.asset_ids else np.zeros((0, t))
    for i, asset_id in enumerate(th.asset_ids):
        # Electric energy equivalent of the room left in the band on either side.
        below = th.capacity_kwh_per_k[i] * (th.temp_initial_c[i] - th.temp_min_c[i]) / th.cop[i]
        above = th.capacity_kwh_per_k[i] * (th.temp_max_c[i] - th.temp_initial_c[i]) / th.cop[i]
        more_power_room, less_power_room = (above, below) if th.heating[i] else (below, above)
        add(
            asset_id,
            int(th.enterprise_index[i]),
            holding[i],
            th.power_max_kw[i] - holding[i],
            holding[i] - th.power_min_kw[i],
            np.full(t, max(more_power_room, 0.0)),
            np.full(t, max(less_power_room, 0.0)),
        )

    ev = problem.ev
    own = ev_own_kw(problem) if len(ev.session_energy_kwh) else np.zeros((0, t))
    for i, asset_id in enumerate(ev.asset_ids):
        mine = ev.session_depot == i
        own_i = own[mine]
        drawn = np.minimum(own_i.sum(axis=0), ev.station_limit_kw[i])
        floor = np.minimum(ev.session_min_kw[mine].sum(axis=0), drawn)
        # Energy a reduction from k may defer: plugged capacity left minus energy still owed.
        plugged = _suffix_sum(ev.session_max_kw[mine]) * hours
        owed = _suffix_sum(own_i) * hours
        present = ev.session_max_kw[mine] > 0
        slack = np.where(present, np.maximum(plugged - owed, 0.0), 0.0).sum(axis=0)
        add(
            asset_id,
            int(ev.enterprise_index[i]),
            drawn,
            zeros,
            drawn - floor,
            zeros,
            np.asarray(slack, dtype=float),
        )

    g = problem.generators
    for i, asset_id in enumerate(g.asset_ids):
        carbon = g.emission_kg_per_kwh[i] * problem.carbon_price_per_t  # kg/kWh = t/MWh
        add(
            asset_id,
            int(g.enterprise_index[i]),
            zeros,
            zeros,
            g.max_kw[i],
            _unlimited(t),
            _unlimited(t),
            cost=float(g.cost_per_mwh[i] + carbon),
        )
    return out, baselines


def build_envelope(
    problem: DispatchProblem, notice_min: Mapping[str, float] | None = None
) -> ParkEnvelope:
    """Envelopes of every enterprise and of the park, from the same arrays the optimiser uses.

    `notice_min` (asset id → minutes) lets DR offers skip assets that need more notice than
    an invitation gives.
    """
    assets, baselines = asset_flexibility(problem, notice_min)
    by_enterprise = {
        e: np.asarray(problem.enterprise_base_kw[i], dtype=float)
        for i, e in enumerate(problem.enterprise_ids)
    }
    for asset in assets:
        by_enterprise[asset.enterprise_id] = (
            by_enterprise[asset.enterprise_id] + baselines[asset.asset_id]
        )
    limits = {
        e: GroupLimits(
            float(problem.enterprise_import_limit_kw[i]),
            float(problem.enterprise_export_limit_kw[i]),
        )
        for i, e in enumerate(problem.enterprise_ids)
    }
    park = GroupLimits(problem.park_import_limit_kw, problem.park_export_limit_kw)
    return combine(problem.horizon, assets, by_enterprise, limits, park)


def notice_of(park: Park) -> dict[str, float]:
    """Each asset's enrolled notice, minutes (for `build_envelope`)."""
    return {asset.id: asset.terms.notice_min for _, asset in park.iter_assets()}
