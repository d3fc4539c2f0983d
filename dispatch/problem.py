"""The solver-agnostic dispatch problem: arrays per asset and interval, one block per asset kind.

`build_problem` turns enrollment, fleet state, forecasts and prices into a `DispatchProblem`;
every solver back-end (the Pyomo model and the direct HiGHS path) reads only this, so asset
physics has one set of inputs. Arrays are numpy: `(n,)` per asset, `(n, T)` per asset and
interval. Power follows the project's sign (positive = drawn from the grid); energy in kWh,
prices in currency per MWh. Where an asset may not be dispatched (outside its enrollment
hours, within its notice, offline) its bounds already pin it to what it does on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from dispatch.series import EvSessionForecast, FloatArray, Horizon, ParkForecast
from vpp.config.schema import (
    AnyAsset,
    BatteryAsset,
    CurtailableLoad,
    EnrollmentTerms,
    EvCharging,
    Generator,
    Park,
    PvAsset,
    ShiftableLoad,
    ThermalLoad,
)
from vpp.domain import AssetKind, AssetState, Availability
from vpp.errors import VPPError

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Penalty on a missed soft target, per MWh, at least this much and at least 10 × the
#: largest absolute price, so that meeting a target always beats any market gain.
MIN_PENALTY_PER_MWH = 10_000.0


class ProblemError(VPPError):
    """The inputs cannot form a dispatch problem; `subject` names the asset or series at fault."""

    def __init__(self, subject: str, message: str) -> None:
        self.subject = subject
        super().__init__(f"{subject}: {message}")


def _f(values: object, shape: tuple[int, ...] | None = None) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if shape is not None:
        array = array.reshape(shape)
    return array


def _empty2(t: int) -> FloatArray:
    return np.zeros((0, t))


@dataclass(frozen=True, slots=True)
class BatteryBlock:
    """Batteries: charge and discharge power, stored energy between bounds, soft terminal energy.

    Stored energy after interval t: e[t] = e[t-1] + h·(η_c·charge[t] − discharge[t]/η_d).
    Degradation is charged per MWh of throughput (charge + discharge).
    """

    asset_ids: tuple[str, ...]
    enterprise_index: IntArray
    charge_max_kw: FloatArray  # (n, T), 0 where the battery may not be dispatched
    discharge_max_kw: FloatArray  # (n, T)
    energy_min_kwh: FloatArray
    energy_max_kwh: FloatArray
    energy_initial_kwh: FloatArray
    energy_terminal_kwh: FloatArray  # soft: stored energy at the end should be at least this
    charge_efficiency: FloatArray
    discharge_efficiency: FloatArray
    degradation_cost_per_mwh: FloatArray

    @classmethod
    def empty(cls, t: int) -> BatteryBlock:
        z = np.zeros(0)
        return cls((), np.zeros(0, np.int64), _empty2(t), _empty2(t), z, z, z, z, z, z, z)


@dataclass(frozen=True, slots=True)
class PvBlock:
    """PV arrays: power = −output, output in [0, generation] when curtailable, else = generation."""

    asset_ids: tuple[str, ...]
    enterprise_index: IntArray
    generation_kw: FloatArray  # (n, T) available output, >= 0
    curtailable: BoolArray  # (n, T)
    curtailment_cost_per_mwh: FloatArray

    @classmethod
    def empty(cls, t: int) -> PvBlock:
        return cls((), np.zeros(0, np.int64), _empty2(t), np.zeros((0, t), bool), np.zeros(0))


@dataclass(frozen=True, slots=True)
class CurtailableBlock:
    """Process loads: power = baseline − reduction + rebound.

    A reduction lasts at most `max_duration_intervals` within any window of that many plus
    `rest_intervals` intervals (at full depth; partial reductions may last longer in
    proportion). `rebound_fraction` of the reduced energy is drawn back within
    `rebound_window_intervals` after it; what is still owed at the end is bought at the last
    interval's price.
    """

    asset_ids: tuple[str, ...]
    enterprise_index: IntArray
    baseline_kw: FloatArray  # (n, T)
    reduction_max_kw: FloatArray  # (n, T), 0 where the load may not be dispatched
    max_duration_intervals: IntArray
    rest_intervals: IntArray
    rebound_fraction: FloatArray
    rebound_window_intervals: IntArray
    rebound_max_kw: FloatArray
    cost_per_mwh: FloatArray  # per MWh of reduction

    @classmethod
    def empty(cls, t: int) -> CurtailableBlock:
        z = np.zeros(0)
        zi = np.zeros(0, np.int64)
        return cls((), zi, _empty2(t), _empty2(t), zi, zi, z, zi, z, z)


@dataclass(frozen=True, slots=True)
class ShiftableBlock:
    """Batch loads that must draw `energy_kwh` over the horizon in allowed intervals (soft).

    Interruptible: any power in [0, power_kw] in allowed intervals. Uninterruptible: `runs`
    blocks of `run_intervals` consecutive intervals, each drawing `run_profile_kw`. A `fixed`
    load follows `baseline_kw` (its local default start) and is not dispatched.
    """

    asset_ids: tuple[str, ...]
    enterprise_index: IntArray
    power_kw: FloatArray
    allowed: BoolArray  # (n, T)
    energy_kwh: FloatArray
    interruptible: BoolArray
    runs: IntArray
    run_intervals: IntArray
    run_profile_kw: tuple[FloatArray, ...]  # per asset, length run_intervals
    fixed: BoolArray
    baseline_kw: FloatArray  # (n, T)

    @classmethod
    def empty(cls, t: int) -> ShiftableBlock:
        z = np.zeros(0)
        zi = np.zeros(0, np.int64)
        zb = np.zeros(0, bool)
        return cls((), zi, z, np.zeros((0, t), bool), z, zb, zi, zi, (), zb, _empty2(t))


@dataclass(frozen=True, slots=True)
class ThermalBlock:
    """HVAC and cold stores: first-order thermal model kept inside a band (soft).

    Exact discretisation with a = exp(−UA·h/C):
    θ[t] = a·θ[t-1] + (1 − a)·(θ_amb[t] + (gain ± COP·P[t]) / UA), + for heating, − for cooling.
    At the end the temperature should be no further from the target side than it started.
    """

    asset_ids: tuple[str, ...]
    enterprise_index: IntArray
    power_min_kw: FloatArray  # (n, T), = power_max where the load follows its own thermostat
    power_max_kw: FloatArray  # (n, T)
    cop: FloatArray
    heating: BoolArray
    capacity_kwh_per_k: FloatArray
    loss_kw_per_k: FloatArray
    gain_kw: FloatArray
    ambient_c: FloatArray  # (n, T)
    temp_min_c: FloatArray
    temp_max_c: FloatArray
    temp_initial_c: FloatArray

    @classmethod
    def empty(cls, t: int) -> ThermalBlock:
        z = np.zeros(0)
        return cls(
            (), np.zeros(0, np.int64), _empty2(t), _empty2(t), z, np.zeros(0, bool), z, z, z,
            _empty2(t), z, z, z,
        )  # fmt: skip

    def decay(self, hours: float) -> FloatArray:
        """a = exp(−UA·h/C) per asset."""
        return np.asarray(np.exp(-self.loss_kw_per_k * hours / self.capacity_kwh_per_k))


@dataclass(frozen=True, slots=True)
class EvBlock:
    """EV depots: one charging power per session, within the session's plug-in intervals.

    Each session should have `session_energy_kwh` by departure (soft); the depot's power is
    the sum of its sessions, at most `station_limit_kw`.
    """

    asset_ids: tuple[str, ...]
    enterprise_index: IntArray
    station_limit_kw: FloatArray
    session_depot: IntArray  # (m,) index into asset_ids
    session_energy_kwh: FloatArray  # (m,)
    session_min_kw: FloatArray  # (m, T), > 0 only where the depot follows its own control
    session_max_kw: FloatArray  # (m, T), 0 outside the plug-in intervals

    @classmethod
    def empty(cls, t: int) -> EvBlock:
        z = np.zeros(0)
        zi = np.zeros(0, np.int64)
        return cls((), zi, z, zi, z, _empty2(t), _empty2(t))


@dataclass(frozen=True, slots=True)
class GeneratorBlock:
    """Generators and CHP: power = −output; output 0 or in [min_kw, max_kw], ramp-limited."""

    asset_ids: tuple[str, ...]
    enterprise_index: IntArray
    min_kw: FloatArray
    max_kw: FloatArray  # (n, T), 0 where the generator may not be dispatched
    ramp_kw_per_interval: FloatArray  # inf when not limited
    cost_per_mwh: FloatArray  # per MWh of electric output
    startup_cost: FloatArray
    emission_kg_per_kwh: FloatArray
    min_up_intervals: IntArray

    @classmethod
    def empty(cls, t: int) -> GeneratorBlock:
        z = np.zeros(0)
        zi = np.zeros(0, np.int64)
        return cls((), zi, z, _empty2(t), z, z, z, z, zi)

    @property
    def needs_commitment(self) -> BoolArray:
        """Generators whose on/off state must be a binary decision."""
        return np.asarray((self.min_kw > 0) | (self.startup_cost > 0) | (self.min_up_intervals > 1))


BlockT = TypeVar(
    "BlockT",
    BatteryBlock,
    PvBlock,
    CurtailableBlock,
    ShiftableBlock,
    ThermalBlock,
    EvBlock,
    GeneratorBlock,
)


@dataclass(frozen=True, slots=True)
class DispatchProblem:
    """One dispatch problem over a horizon. Build with `build_problem`; change with `replace`.

    Objective (currency): energy bought at `price_per_mwh` − energy sold at
    `export_price_per_mwh` + degradation + curtailment and reduction costs + generator fuel and
    start-ups + `carbon_price_per_t` × emissions (grid imports and generators) + penalties on
    missed soft targets. With `target_kw` (NaN = free), the assets' summed power should equal it
    (an award to follow); the shortfall is penalised and reported.
    """

    horizon: Horizon
    price_per_mwh: FloatArray  # (T,)
    export_price_per_mwh: FloatArray  # (T,), <= price_per_mwh
    enterprise_ids: tuple[str, ...]
    enterprise_import_limit_kw: FloatArray  # (E,)
    enterprise_export_limit_kw: FloatArray  # (E,)
    enterprise_base_kw: FloatArray  # (E, T) power behind the meter that is not enrolled
    park_import_limit_kw: float
    park_export_limit_kw: float
    batteries: BatteryBlock
    pv: PvBlock
    curtailable: CurtailableBlock
    shiftable: ShiftableBlock
    thermal: ThermalBlock
    ev: EvBlock
    generators: GeneratorBlock
    carbon_price_per_t: float = 0.0
    grid_emission_kg_per_kwh: FloatArray | None = None  # (T,)
    target_kw: FloatArray | None = None  # (T,), NaN where free
    penalty_per_mwh: float = MIN_PENALTY_PER_MWH

    def __post_init__(self) -> None:
        t = self.horizon.intervals
        if self.price_per_mwh.shape != (t,) or self.export_price_per_mwh.shape != (t,):
            raise ProblemError("prices", f"need {t} values, one per interval")
        if not np.all(np.isfinite(self.price_per_mwh)):
            raise ProblemError("prices", "contain NaN or infinite values")
        if np.any(self.export_price_per_mwh > self.price_per_mwh + 1e-9):
            raise ProblemError("prices", "the export price must not exceed the import price")
        if self.target_kw is not None and self.target_kw.shape != (t,):
            raise ProblemError("target", f"need {t} values, one per interval")

    @property
    def intervals(self) -> int:
        return self.horizon.intervals

    @property
    def blocks(self) -> tuple[tuple[AssetKind, tuple[str, ...], IntArray], ...]:
        """(kind, asset ids, enterprise index) of every block, in schedule order."""
        return (
            (AssetKind.BATTERY, self.batteries.asset_ids, self.batteries.enterprise_index),
            (AssetKind.PV, self.pv.asset_ids, self.pv.enterprise_index),
            (
                AssetKind.CURTAILABLE_LOAD,
                self.curtailable.asset_ids,
                self.curtailable.enterprise_index,
            ),
            (AssetKind.SHIFTABLE_LOAD, self.shiftable.asset_ids, self.shiftable.enterprise_index),
            (AssetKind.THERMAL_LOAD, self.thermal.asset_ids, self.thermal.enterprise_index),
            (AssetKind.EV_CHARGING, self.ev.asset_ids, self.ev.enterprise_index),
            (AssetKind.GENERATOR, self.generators.asset_ids, self.generators.enterprise_index),
        )

    @property
    def asset_ids(self) -> tuple[str, ...]:
        """Every asset, block by block (the row order of a schedule)."""
        return tuple(a for _, ids, _ in self.blocks for a in ids)

    @property
    def asset_kinds(self) -> tuple[AssetKind, ...]:
        return tuple(kind for kind, ids, _ in self.blocks for _ in ids)

    @property
    def asset_enterprise_index(self) -> IntArray:
        parts = [index for _, _, index in self.blocks]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    @property
    def is_mip(self) -> bool:
        """Whether the problem needs integer decisions (run blocks, unit commitment)."""
        return bool(
            np.any(~self.shiftable.interruptible & ~self.shiftable.fixed)
            or np.any(self.generators.needs_commitment)
        )

    def with_prices(
        self, price_per_mwh: FloatArray, export_price_per_mwh: FloatArray | None = None
    ) -> DispatchProblem:
        """The same problem at other prices (export at the same price unless given)."""
        price = _f(price_per_mwh)
        export = price if export_price_per_mwh is None else _f(export_price_per_mwh)
        penalty = max(self.penalty_per_mwh, default_penalty(price))
        return replace(
            self, price_per_mwh=price, export_price_per_mwh=export, penalty_per_mwh=penalty
        )

    def with_target(self, target_kw: FloatArray | None) -> DispatchProblem:
        """The same problem asked to follow an aggregate power per interval (NaN = free)."""
        return replace(self, target_kw=None if target_kw is None else _f(target_kw))


def default_penalty(price_per_mwh: FloatArray) -> float:
    largest = float(np.max(np.abs(price_per_mwh))) if price_per_mwh.size else 0.0
    return max(MIN_PENALTY_PER_MWH, 10.0 * largest)


# --- building from enrollment -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Choices made while building; the defaults suit a day-ahead plan."""

    now: datetime | None = None  # intervals starting before now + notice are not dispatched
    carbon_price_per_t: float = 0.0
    terminal_energy_fraction: float | None = None  # battery end SoC target; None = as it starts
    export_price_per_mwh: FloatArray | None = None


@dataclass(slots=True)
class _Calendar:
    """Local weekday and minute of day of every interval start."""

    weekday: list[int]
    minute: list[float]
    local_date: list[object]
    starts: list[datetime]

    @classmethod
    def of(cls, horizon: Horizon, park: Park) -> _Calendar:
        starts = horizon.starts()
        local = [s.astimezone(park.tz) for s in starts]
        return cls(
            [s.weekday() for s in local],
            [s.hour * 60 + s.minute + s.second / 60 for s in local],
            [s.date() for s in local],
            starts,
        )


def _dispatchable(
    terms: EnrollmentTerms,
    calendar: _Calendar,
    now: datetime | None,
    offline: bool,
    cache: dict[str, BoolArray],
) -> BoolArray:
    # Most assets share a few sets of hours and days: compute each set's mask once.
    key = ",".join(str(w) for w in terms.available_hours) + "|" + ",".join(terms.available_days)
    hours = cache.get(key)
    if hours is None:
        pairs = zip(calendar.weekday, calendar.minute, strict=True)
        hours = np.array([terms.available_at(d, m) for d, m in pairs], dtype=bool)
        cache[key] = hours
    mask = hours.copy()
    if offline:
        mask[:] = False
    if now is not None:
        earliest = now + timedelta(minutes=terms.notice_min)
        mask &= np.array([s >= earliest for s in calendar.starts], dtype=bool)
    return mask


def _forecast_kw(forecast: ParkForecast | None, asset_id: str, t: int) -> FloatArray | None:
    if forecast is None or asset_id not in forecast.assets:
        return None
    power = _f(forecast.assets[asset_id].power_kw)
    if power.shape != (t,) or not np.all(np.isfinite(power)):
        raise ProblemError(asset_id, f"forecast needs {t} finite values")
    return power


def _intervals(minutes: float, horizon: Horizon) -> int:
    return max(1, math.ceil(minutes * 60 / horizon.interval.total_seconds() - 1e-9))


def build_problem(
    park: Park,
    horizon: Horizon,
    price_per_mwh: FloatArray | Sequence[float],
    forecast: ParkForecast | None = None,
    states: Mapping[str, AssetState] | None = None,
    options: BuildOptions | None = None,
) -> DispatchProblem:
    """The dispatch problem of a park over `horizon` at the given prices (one per interval).

    `forecast` gives loads' baselines, PV availability and EV sessions (loads fall back to
    their enrolled profiles and EV depots to their booked sessions; PV needs a forecast).
    `states` (from the fleet) gives batteries' state of charge, thermal loads' temperature and
    which assets are offline.
    """
    options = options or BuildOptions()
    t = horizon.intervals
    price = _f(price_per_mwh)
    if price.shape != (t,):
        raise ProblemError("prices", f"need {t} values for the horizon, got {price.size}")
    states = states or {}
    calendar = _Calendar.of(horizon, park)
    enterprises = [e.id for e in park.enterprises]
    enterprise_pos = {e: i for i, e in enumerate(enterprises)}
    rows: dict[AssetKind, list[tuple[int, AnyAsset, BoolArray]]] = {k: [] for k in AssetKind}
    cache: dict[str, BoolArray] = {}
    for enterprise, asset in park.iter_assets():
        state = states.get(asset.id)
        offline = state is not None and state.availability is Availability.OFFLINE
        mask = _dispatchable(asset.terms, calendar, options.now, offline, cache)
        rows[asset.kind].append((enterprise_pos[enterprise.id], asset, mask))

    h = horizon.hours
    export = price if options.export_price_per_mwh is None else _f(options.export_price_per_mwh)
    grid_factor = np.full(t, park.carbon.grid_emission_factor_kg_per_kwh)
    return DispatchProblem(
        horizon=horizon,
        price_per_mwh=price,
        export_price_per_mwh=export,
        enterprise_ids=tuple(enterprises),
        enterprise_import_limit_kw=_f([e.connection_limit_kw for e in park.enterprises]),
        enterprise_export_limit_kw=_f([e.export_limit_kw for e in park.enterprises]),
        enterprise_base_kw=np.zeros((len(enterprises), t)),
        park_import_limit_kw=park.grid_import_limit_kw,
        park_export_limit_kw=park.grid_export_limit_kw,
        batteries=_batteries(rows[AssetKind.BATTERY], t, states, options),
        pv=_pv(rows[AssetKind.PV], t, forecast),
        curtailable=_curtailable(rows[AssetKind.CURTAILABLE_LOAD], horizon, calendar, forecast),
        shiftable=_shiftable(rows[AssetKind.SHIFTABLE_LOAD], horizon, calendar),
        thermal=_thermal(rows[AssetKind.THERMAL_LOAD], t, forecast, states),
        ev=_ev(rows[AssetKind.EV_CHARGING], horizon, park, forecast),
        generators=_generators(rows[AssetKind.GENERATOR], horizon, h),
        carbon_price_per_t=options.carbon_price_per_t,
        grid_emission_kg_per_kwh=grid_factor,
        penalty_per_mwh=default_penalty(price),
    )


Row = tuple[int, AnyAsset, BoolArray]


def _ids(rows: list[Row]) -> tuple[tuple[str, ...], IntArray]:
    return tuple(a.id for _, a, _ in rows), np.array([e for e, _, _ in rows], dtype=np.int64)


def _mask(rows: list[Row], t: int) -> BoolArray:
    return np.array([m for _, _, m in rows], dtype=bool).reshape(len(rows), t)


def _batteries(
    rows: list[Row], t: int, states: Mapping[str, AssetState], options: BuildOptions
) -> BatteryBlock:
    if not rows:
        return BatteryBlock.empty(t)
    assets = [a for _, a, _ in rows if isinstance(a, BatteryAsset)]
    ids, ent = _ids(rows)
    mask = _mask(rows, t)
    cap = _f([a.capacity_kwh for a in assets])
    soc0 = []
    for a in assets:
        state = states.get(a.id)
        measured = state.last.soc_fraction if state is not None and state.last else None
        soc0.append(a.soc_initial if measured is None else min(max(measured, 0.0), 1.0))
    e0 = cap * _f(soc0)
    emin = np.minimum(cap * _f([a.soc_min for a in assets]), e0)
    emax = np.maximum(cap * _f([a.soc_max for a in assets]), e0)
    if options.terminal_energy_fraction is None:
        terminal = e0.copy()
    else:
        terminal = np.clip(cap * options.terminal_energy_fraction, emin, emax)
    return BatteryBlock(
        asset_ids=ids,
        enterprise_index=ent,
        charge_max_kw=mask * _f([a.max_charge_kw for a in assets])[:, None],
        discharge_max_kw=mask * _f([a.power_kw for a in assets])[:, None],
        energy_min_kwh=emin,
        energy_max_kwh=emax,
        energy_initial_kwh=e0,
        energy_terminal_kwh=terminal,
        charge_efficiency=_f([a.charge_efficiency for a in assets]),
        discharge_efficiency=_f([a.discharge_efficiency for a in assets]),
        degradation_cost_per_mwh=_f([a.degradation_cost_per_mwh for a in assets]),
    )


def _pv(rows: list[Row], t: int, forecast: ParkForecast | None) -> PvBlock:
    if not rows:
        return PvBlock.empty(t)
    assets = [a for _, a, _ in rows if isinstance(a, PvAsset)]
    ids, ent = _ids(rows)
    generation = np.zeros((len(assets), t))
    for i, a in enumerate(assets):
        power = _forecast_kw(forecast, a.id, t)
        if power is None:
            raise ProblemError(a.id, "a PV array needs a forecast of its generation")
        generation[i] = np.clip(-power, 0.0, a.max_output_kw)
    curtailable = _mask(rows, t) & np.array([a.curtailable for a in assets])[:, None]
    return PvBlock(
        ids, ent, generation, curtailable, _f([a.curtailment_cost_per_mwh for a in assets])
    )


def _profile_kw(load: CurtailableLoad, calendar: _Calendar) -> FloatArray:
    """The enrolled profile on the horizon (what `LoadProfile.at` gives, for every interval)."""
    profile = load.profile
    weekday = np.asarray(profile.weekday_kw)
    weekend = np.asarray(profile.weekend_kw) if profile.weekend_kw is not None else weekday
    minute = np.asarray(calendar.minute)
    is_weekend = np.asarray(calendar.weekday) >= 5
    out = np.empty(minute.size)
    for values, where in ((weekday, ~is_weekend), (weekend, is_weekend)):
        index = (minute[where] * values.size // 1440).astype(np.int64) % values.size
        out[where] = values[index]
    return out


def _curtailable(
    rows: list[Row], horizon: Horizon, calendar: _Calendar, forecast: ParkForecast | None
) -> CurtailableBlock:
    t = horizon.intervals
    if not rows:
        return CurtailableBlock.empty(t)
    assets = [a for _, a, _ in rows if isinstance(a, CurtailableLoad)]
    ids, ent = _ids(rows)
    baseline = np.zeros((len(assets), t))
    for i, a in enumerate(assets):
        power = _forecast_kw(forecast, a.id, t)
        baseline[i] = np.maximum(power, 0.0) if power is not None else _profile_kw(a, calendar)
    reduction = np.minimum(_f([a.max_reduction_kw for a in assets])[:, None], baseline)
    rebound = _f([a.rebound_fraction for a in assets])
    return CurtailableBlock(
        asset_ids=ids,
        enterprise_index=ent,
        baseline_kw=baseline,
        reduction_max_kw=reduction * _mask(rows, t),
        max_duration_intervals=np.array(
            [
                max(1, int(a.max_duration_min * 60 // horizon.interval.total_seconds()))
                for a in assets
            ],
            dtype=np.int64,
        ),
        rest_intervals=np.array(
            [_intervals(a.min_rest_min, horizon) if a.min_rest_min > 0 else 0 for a in assets],
            dtype=np.int64,
        ),
        rebound_fraction=rebound,
        rebound_window_intervals=np.array(
            [_intervals(a.rebound_window_min, horizon) for a in assets], dtype=np.int64
        ),
        rebound_max_kw=np.maximum(rebound, 1.0) * _f([a.max_reduction_kw for a in assets]),
        cost_per_mwh=_f([a.cost_per_mwh + a.terms.compensation_per_mwh for a in assets]),
    )


def _shiftable(rows: list[Row], horizon: Horizon, calendar: _Calendar) -> ShiftableBlock:
    t = horizon.intervals
    if not rows:
        return ShiftableBlock.empty(t)
    assets = [a for _, a, _ in rows if isinstance(a, ShiftableLoad)]
    ids, ent = _ids(rows)
    h = horizon.hours
    masks = _mask(rows, t)
    allowed = np.zeros((len(assets), t), dtype=bool)
    baseline = np.zeros((len(assets), t))
    energy = np.zeros(len(assets))
    runs = np.zeros(len(assets), dtype=np.int64)
    run_len = np.zeros(len(assets), dtype=np.int64)
    profiles: list[FloatArray] = []
    fixed = np.zeros(len(assets), dtype=bool)
    for i, a in enumerate(assets):
        window = np.array(
            [any(w.contains_minute(m) for w in a.windows) for m in calendar.minute], dtype=bool
        )
        duration_h = a.run_duration_h
        n_run = max(1, math.ceil(duration_h / h - 1e-9))
        profile = np.full(n_run, a.power_kw)
        profile[-1] = a.power_kw * (duration_h - (n_run - 1) * h) / h
        run_len[i] = n_run
        profiles.append(profile)
        # Runs owed in the horizon: the day's runs in proportion to the day's window it covers.
        per_day_window = sum(((w.end_minute - w.start_minute) % 1440 or 1440) for w in a.windows)
        covered = window.sum() * horizon.interval.total_seconds() / 60
        runs[i] = max(0, round(a.runs_per_day * min(covered / per_day_window, 7 * 24)))
        energy[i] = runs[i] * a.energy_per_run_kwh
        allowed[i] = window & masks[i]
        baseline[i] = _default_runs(a, window, calendar, profile, int(runs[i]))
        # Dispatched only where the engine may move every run the load would make on its own.
        fixed[i] = bool(np.any((baseline[i] > 0) & ~masks[i])) or not allowed[i].any()
    return ShiftableBlock(
        asset_ids=ids,
        enterprise_index=ent,
        power_kw=_f([a.power_kw for a in assets]),
        allowed=allowed,
        energy_kwh=energy,
        interruptible=np.array([a.interruptible for a in assets], dtype=bool),
        runs=runs,
        run_intervals=run_len,
        run_profile_kw=tuple(profiles),
        fixed=fixed,
        baseline_kw=baseline,
    )


def _default_runs(
    asset: ShiftableLoad, window: BoolArray, calendar: _Calendar, profile: FloatArray, runs: int
) -> FloatArray:
    """What local control does: start each run at the default start (else a window's start)."""
    t = window.size
    power = np.zeros(t)
    if asset.default_start is not None:
        start_minute = asset.default_start.hour * 60 + asset.default_start.minute
        starts = [k for k in range(t) if abs(calendar.minute[k] - start_minute) < 1e-6]
    else:
        starts = [k for k in range(t) if window[k] and (k == 0 or not window[k - 1])]
    placed = 0
    busy_until = 0
    for k in starts:
        if placed >= runs:
            break
        for j in range(runs - placed):
            begin = max(k + j * profile.size, busy_until)
            end = min(begin + profile.size, t)
            if begin >= t:
                break
            power[begin:end] = profile[: end - begin]
            busy_until = end
            placed += 1
    return power


def _thermal(
    rows: list[Row], t: int, forecast: ParkForecast | None, states: Mapping[str, AssetState]
) -> ThermalBlock:
    if not rows:
        return ThermalBlock.empty(t)
    assets = [a for _, a, _ in rows if isinstance(a, ThermalLoad)]
    ids, ent = _ids(rows)
    masks = _mask(rows, t)
    rated = _f([a.rated_power_kw for a in assets])[:, None]
    baseline = np.zeros((len(assets), t))
    for i, a in enumerate(assets):
        power = _forecast_kw(forecast, a.id, t)
        baseline[i] = np.clip(
            power if power is not None else a.holding_power_kw, 0, a.rated_power_kw
        )
    ambient = np.array([np.full(t, a.ambient_c) for a in assets]).reshape(len(assets), t)
    if forecast is not None and forecast.ambient_c is not None:
        ambient[:] = _f(forecast.ambient_c)[None, :]
    temp0 = []
    for a in assets:
        state = states.get(a.id)
        measured = state.last.temperature_c if state is not None and state.last else None
        temp0.append(a.initial_temp_c if measured is None else measured)
    return ThermalBlock(
        asset_ids=ids,
        enterprise_index=ent,
        power_min_kw=np.where(masks, 0.0, baseline),
        power_max_kw=np.where(masks, rated, baseline),
        cop=_f([a.cop for a in assets]),
        heating=np.array([a.mode == "heating" for a in assets], dtype=bool),
        capacity_kwh_per_k=_f([a.thermal_capacity_kwh_per_k for a in assets]),
        loss_kw_per_k=_f([a.loss_kw_per_k for a in assets]),
        gain_kw=_f([a.internal_gain_kw for a in assets]),
        ambient_c=ambient,
        temp_min_c=_f([a.temp_min_c for a in assets]),
        temp_max_c=_f([a.temp_max_c for a in assets]),
        temp_initial_c=_f(temp0),
    )


def _booked(depot: EvCharging, horizon: Horizon, park: Park) -> list[EvSessionForecast]:
    """Booked sessions of the config on the horizon's grid, day by day (local time)."""
    sessions: list[EvSessionForecast] = []
    tz = park.tz
    first = horizon.start.astimezone(tz).date() - timedelta(days=1)
    last = horizon.end.astimezone(tz).date()
    day = first
    while day <= last:
        for s in depot.sessions:
            arrive = datetime.combine(day, s.arrival, tz)
            leave = datetime.combine(day, s.departure, tz)
            if leave <= arrive:
                leave += timedelta(days=1)
            a = max(horizon.index_of(arrive), 0)
            d = min(horizon.index_of(leave - timedelta(microseconds=1)) + 1, horizon.intervals)
            if d > a:
                sessions.append(EvSessionForecast(a, d, s.energy_kwh, depot.charger_power_kw))
        day += timedelta(days=1)
    return sessions


def _ev(rows: list[Row], horizon: Horizon, park: Park, forecast: ParkForecast | None) -> EvBlock:
    t = horizon.intervals
    if not rows:
        return EvBlock.empty(t)
    assets = [a for _, a, _ in rows if isinstance(a, EvCharging)]
    ids, ent = _ids(rows)
    masks = _mask(rows, t)
    h = horizon.hours
    depot_of: list[int] = []
    energy: list[float] = []
    lows: list[FloatArray] = []
    highs: list[FloatArray] = []
    for i, a in enumerate(assets):
        if forecast is not None and a.id in forecast.ev_sessions:
            sessions = list(forecast.ev_sessions[a.id])
        else:
            sessions = _booked(a, horizon, park)
        for s in sessions:
            lo, hi = max(s.arrival_index, 0), min(s.departure_index, t)
            if hi <= lo or s.energy_kwh <= 0:
                continue
            cap = min(s.max_power_kw, a.charger_power_kw)
            high = np.zeros(t)
            high[lo:hi] = cap
            # On its own a charger draws at full power from plug-in until the energy is in.
            own = np.zeros(t)
            left = s.energy_kwh
            for k in range(lo, hi):
                own[k] = min(cap, left / h)
                left -= own[k] * h
                if left <= 1e-9:
                    break
            fixed = ~masks[i]
            depot_of.append(i)
            energy.append(min(s.energy_kwh, cap * (hi - lo) * h))
            lows.append(np.where(fixed, own, 0.0))
            highs.append(np.where(fixed, own, high))
    limit = _f([a.max_power_kw for a in assets])
    m = len(depot_of)
    return EvBlock(
        asset_ids=ids,
        enterprise_index=ent,
        station_limit_kw=limit,
        session_depot=np.array(depot_of, dtype=np.int64),
        session_energy_kwh=_f(energy),
        session_min_kw=np.array(lows).reshape(m, t),
        session_max_kw=np.array(highs).reshape(m, t),
    )


def _generators(rows: list[Row], horizon: Horizon, h: float) -> GeneratorBlock:
    t = horizon.intervals
    if not rows:
        return GeneratorBlock.empty(t)
    assets = [a for _, a, _ in rows if isinstance(a, Generator)]
    ids, ent = _ids(rows)
    minutes = horizon.interval.total_seconds() / 60
    return GeneratorBlock(
        asset_ids=ids,
        enterprise_index=ent,
        min_kw=_f([a.min_kw for a in assets]),
        max_kw=_mask(rows, t) * _f([a.max_kw for a in assets])[:, None],
        ramp_kw_per_interval=_f(
            [a.ramp_kw_per_min * minutes if a.ramp_kw_per_min else math.inf for a in assets]
        ),
        cost_per_mwh=_f([a.fuel_cost_per_mwh for a in assets]),
        startup_cost=_f([a.startup_cost for a in assets]),
        emission_kg_per_kwh=_f([a.emission_kg_per_kwh for a in assets]),
        min_up_intervals=np.array(
            [_intervals(a.min_up_min, horizon) if a.min_up_min > 0 else 1 for a in assets],
            dtype=np.int64,
        ),
    )


def select(problem: DispatchProblem, asset_ids: Sequence[str]) -> DispatchProblem:
    """The sub-problem of some assets only (same horizon, prices and limits)."""
    wanted = set(asset_ids)

    def pick(ids: tuple[str, ...]) -> IntArray:
        return np.array([i for i, a in enumerate(ids) if a in wanted], dtype=np.int64)

    return replace(
        problem,
        batteries=take(problem.batteries, pick(problem.batteries.asset_ids)),
        pv=take(problem.pv, pick(problem.pv.asset_ids)),
        curtailable=take(problem.curtailable, pick(problem.curtailable.asset_ids)),
        shiftable=take(problem.shiftable, pick(problem.shiftable.asset_ids)),
        thermal=take(problem.thermal, pick(problem.thermal.asset_ids)),
        ev=take(problem.ev, pick(problem.ev.asset_ids)),
        generators=take(problem.generators, pick(problem.generators.asset_ids)),
    )


def take(block: BlockT, index: IntArray) -> BlockT:
    """The rows `index` of a block (EV sessions follow their depots)."""
    n = len(block.asset_ids)
    values: dict[str, object] = {}
    for name in block.__dataclass_fields__:
        value = getattr(block, name)
        if name in ("asset_ids", "run_profile_kw"):
            values[name] = tuple(value[i] for i in index)
        elif (
            isinstance(value, np.ndarray)
            and value.shape[:1] == (n,)
            and not name.startswith("session_")
        ):
            values[name] = value[index]
        else:
            values[name] = value
    if isinstance(block, EvBlock):
        keep = np.isin(block.session_depot, index)
        remap = np.full(max(n, 1), -1, dtype=np.int64)
        remap[index] = np.arange(index.size)
        values["session_depot"] = remap[block.session_depot[keep]]
        for name in ("session_energy_kwh", "session_min_kw", "session_max_kw"):
            values[name] = getattr(block, name)[keep]
    return type(block)(**values)  # type: ignore[arg-type]


def select_enterprises(problem: DispatchProblem, enterprises: Sequence[int]) -> DispatchProblem:
    """The sub-problem of some enterprises (their assets and connections; park limits kept)."""
    keep = np.array(sorted(enterprises), dtype=np.int64)
    remap = np.full(len(problem.enterprise_ids), -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size)

    def rows(block: BlockT) -> BlockT:
        index = np.flatnonzero(np.isin(block.enterprise_index, keep))
        sub = take(block, index)
        return replace(sub, enterprise_index=remap[sub.enterprise_index])

    return replace(
        problem,
        enterprise_ids=tuple(problem.enterprise_ids[i] for i in keep),
        enterprise_import_limit_kw=problem.enterprise_import_limit_kw[keep],
        enterprise_export_limit_kw=problem.enterprise_export_limit_kw[keep],
        enterprise_base_kw=problem.enterprise_base_kw[keep],
        batteries=rows(problem.batteries),
        pv=rows(problem.pv),
        curtailable=rows(problem.curtailable),
        shiftable=rows(problem.shiftable),
        thermal=rows(problem.thermal),
        ev=rows(problem.ev),
        generators=rows(problem.generators),
    )


def power_range_kw(problem: DispatchProblem) -> tuple[FloatArray, FloatArray]:
    """Loosest (lowest, highest) power of every asset per interval, from bounds alone."""
    parts_lo: list[FloatArray] = []
    parts_hi: list[FloatArray] = []
    b = problem.batteries
    parts_lo.append(-b.discharge_max_kw)
    parts_hi.append(b.charge_max_kw)
    pv = problem.pv
    parts_lo.append(-pv.generation_kw)
    parts_hi.append(-np.where(pv.curtailable, 0.0, pv.generation_kw))
    c = problem.curtailable
    parts_lo.append(c.baseline_kw - c.reduction_max_kw)
    parts_hi.append(c.baseline_kw + c.rebound_max_kw[:, None] * (c.rebound_fraction > 0)[:, None])
    s = problem.shiftable
    s_hi = np.where(s.fixed[:, None], s.baseline_kw, np.where(s.allowed, s.power_kw[:, None], 0))
    parts_lo.append(np.where(s.fixed[:, None], s.baseline_kw, 0.0))
    parts_hi.append(s_hi)
    th = problem.thermal
    parts_lo.append(th.power_min_kw)
    parts_hi.append(th.power_max_kw)
    ev = problem.ev
    t = problem.intervals
    ev_lo = np.zeros((len(ev.asset_ids), t))
    ev_hi = np.zeros((len(ev.asset_ids), t))
    np.add.at(ev_lo, ev.session_depot, ev.session_min_kw)
    np.add.at(ev_hi, ev.session_depot, ev.session_max_kw)
    parts_lo.append(ev_lo)
    parts_hi.append(np.minimum(ev_hi, ev.station_limit_kw[:, None]))
    g = problem.generators
    parts_lo.append(-g.max_kw)
    parts_hi.append(np.zeros_like(g.max_kw))
    return np.concatenate(parts_lo), np.concatenate(parts_hi)


def empty_problem(
    horizon: Horizon,
    price_per_mwh: FloatArray | Sequence[float],
    *,
    enterprises: Sequence[str] = ("enterprise",),
    import_limit_kw: float = 1e9,
    export_limit_kw: float = 1e9,
) -> DispatchProblem:
    """A problem with no assets, generous limits and one price series (blocks are then set
    with `dataclasses.replace`): for tests and for callers that build blocks themselves."""
    t = horizon.intervals
    price = _f(price_per_mwh)
    e = len(enterprises)
    return DispatchProblem(
        horizon=horizon,
        price_per_mwh=price,
        export_price_per_mwh=price.copy(),
        enterprise_ids=tuple(enterprises),
        enterprise_import_limit_kw=np.full(e, import_limit_kw),
        enterprise_export_limit_kw=np.full(e, export_limit_kw),
        enterprise_base_kw=np.zeros((e, t)),
        park_import_limit_kw=import_limit_kw,
        park_export_limit_kw=export_limit_kw,
        batteries=BatteryBlock.empty(t),
        pv=PvBlock.empty(t),
        curtailable=CurtailableBlock.empty(t),
        shiftable=ShiftableBlock.empty(t),
        thermal=ThermalBlock.empty(t),
        ev=EvBlock.empty(t),
        generators=GeneratorBlock.empty(t),
        penalty_per_mwh=default_penalty(price),
    )
