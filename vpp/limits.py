"""Dynamic power limits of every asset for the next control period.

The static range of an asset (`vpp.assets.static_limits`) says what it can ever be asked for;
this module narrows it with what is true now: battery state of charge over the horizon a
setpoint may stay in force, ramp rates, the thermal band, enrollment hours and notice, and the
generator's running range. It is vectorised: parameters are laid out in arrays once per park
and each cycle is a handful of numpy operations, so 10,000 assets cost well under a
millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from vpp import solar
from vpp.assets import static_limits
from vpp.config.schema import (
    AnyAsset,
    BatteryAsset,
    CurtailableLoad,
    EvCharging,
    Generator,
    Location,
    Park,
    PvAsset,
    ShiftableLoad,
    ThermalLoad,
    TimeWindow,
)
from vpp.domain import Measurement, PowerLimits

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

PROFILE_POINTS = 96  # load profiles resampled to quarter hours
GENERATOR_RUNNING_KW = 1.0  # output beyond this (kW) means the generator is running


class Blocked(IntEnum):
    """Why an asset may not receive a setpoint this cycle (0 = it may)."""

    NO = 0
    NO_TELEMETRY = 1  # no fresh measurement
    OUTSIDE_HOURS = 2  # outside the enrolled hours or days
    NOTICE = 3  # the deviation in force was announced later than the enrolled notice
    NOT_CONTROLLABLE = 4  # e.g. PV without curtailment
    SCHEDULED_ONLY = 5  # shiftable batch runs: started and stopped by the schedule only
    GENERATOR_OFF = 6  # starting a generator is the schedule's decision, not the loop's


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Latest measured state of every asset, in the `LimitModel`'s order (NaN = unknown)."""

    power_kw: FloatArray
    soc_fraction: FloatArray
    temperature_c: FloatArray
    fresh: BoolArray

    @classmethod
    def empty(cls, n: int) -> Snapshot:
        nan = np.full(n, np.nan)
        return cls(nan.copy(), nan.copy(), nan.copy(), np.zeros(n, dtype=np.bool_))


@dataclass(frozen=True, slots=True)
class Limits:
    """Power range per asset for the next period; `lower_kw <= upper_kw` everywhere.

    Only assets with `blocked == 0` may be sent a setpoint; for the others the range is a
    point at their measured power (0 when unknown) so that the arrays stay usable.
    """

    lower_kw: FloatArray
    upper_kw: FloatArray
    blocked: npt.NDArray[np.int8]

    @property
    def controllable(self) -> BoolArray:
        mask: BoolArray = self.blocked == Blocked.NO
        return mask


def _window_key(windows: Sequence[TimeWindow]) -> tuple[tuple[int, int], ...]:
    return tuple((w.start_minute, w.end_minute) for w in windows)


def _profile_row(values: Sequence[float]) -> FloatArray:
    row = np.asarray(values, dtype=np.float64)
    return np.repeat(row, PROFILE_POINTS // row.shape[0])


class LimitModel:
    """Per-asset parameters laid out as arrays; `compute` gives the limits for one cycle."""

    def __init__(self, assets: Sequence[AnyAsset], tz: tzinfo) -> None:
        self.asset_ids = [a.id for a in assets]
        self.index = {asset_id: i for i, asset_id in enumerate(self.asset_ids)}
        self.tz = tz
        n = len(assets)
        self.n = n
        statics = [static_limits(a) for a in assets]
        self.static_lower_kw = np.array([s.min_kw for s in statics], dtype=np.float64)
        self.static_upper_kw = np.array([s.max_kw for s in statics], dtype=np.float64)
        self.notice_min = np.array([a.terms.notice_min for a in assets], dtype=np.float64)
        nan = np.full(n, np.nan)

        def mask(kind: type) -> BoolArray:
            return np.array([isinstance(a, kind) for a in assets], dtype=np.bool_)

        def param(kind: type, getter: str) -> FloatArray:
            values = nan.copy()
            for i, a in enumerate(assets):
                if isinstance(a, kind):
                    raw = getattr(a, getter)
                    values[i] = np.nan if raw is None else float(raw)
            return values

        # batteries
        self.battery = mask(BatteryAsset)
        self.capacity_kwh = param(BatteryAsset, "capacity_kwh")
        self.soc_min = param(BatteryAsset, "soc_min")
        self.soc_max = param(BatteryAsset, "soc_max")
        self.charge_eff = param(BatteryAsset, "charge_efficiency")
        self.discharge_eff = param(BatteryAsset, "discharge_efficiency")
        # ramp in kW/s for every asset that has one (batteries per s, generators per min)
        ramp = param(BatteryAsset, "ramp_kw_per_s")
        generator_ramp = param(Generator, "ramp_kw_per_min") / 60.0
        self.ramp_kw_per_s = np.where(np.isnan(ramp), generator_ramp, ramp)
        self.ramp_kw_per_s[np.isnan(self.ramp_kw_per_s)] = np.inf
        # PV
        self.pv = mask(PvAsset)
        self.pv_fixed = np.array(
            [isinstance(a, PvAsset) and not a.curtailable for a in assets], dtype=np.bool_
        )
        # curtailable loads: profile value at local time is the uncurtailed power
        self.curtailable = mask(CurtailableLoad)
        self.max_reduction_kw = param(CurtailableLoad, "max_reduction_kw")
        self._curtailable_index = np.flatnonzero(self.curtailable)
        weekday_rows = [
            _profile_row(a.profile.weekday_kw) for a in assets if isinstance(a, CurtailableLoad)
        ]
        weekend_rows = [
            _profile_row(a.profile.weekend_kw or a.profile.weekday_kw)
            for a in assets
            if isinstance(a, CurtailableLoad)
        ]
        empty = np.zeros((0, PROFILE_POINTS))
        self._weekday_profile = np.vstack(weekday_rows) if weekday_rows else empty
        self._weekend_profile = np.vstack(weekend_rows) if weekend_rows else empty
        self.shiftable = mask(ShiftableLoad)
        # thermal loads
        self.thermal = mask(ThermalLoad)
        self.cooling = np.array(
            [isinstance(a, ThermalLoad) and a.mode == "cooling" for a in assets], dtype=np.bool_
        )
        self.cop = param(ThermalLoad, "cop")
        self.heat_capacity = param(ThermalLoad, "thermal_capacity_kwh_per_k")
        self.loss_kw_per_k = param(ThermalLoad, "loss_kw_per_k")
        self.temp_min_c = param(ThermalLoad, "temp_min_c")
        self.temp_max_c = param(ThermalLoad, "temp_max_c")
        self.ambient_c = param(ThermalLoad, "ambient_c")
        self.internal_gain_kw = param(ThermalLoad, "internal_gain_kw")
        # EV depots keep their static range: which vehicles are plugged in is not telemetered.
        self.ev = mask(EvCharging)
        # generators
        self.generator = mask(Generator)
        self.gen_min_kw = param(Generator, "min_kw")
        self.gen_max_kw = param(Generator, "max_kw")
        # enrollment hours and days, grouped by identical terms
        self._terms_groups: dict[tuple[object, ...], list[int]] = {}
        self._terms_of: dict[tuple[object, ...], AnyAsset] = {}
        for i, a in enumerate(assets):
            key = (_window_key(a.terms.available_hours), tuple(a.terms.available_days))
            self._terms_groups.setdefault(key, []).append(i)
            self._terms_of.setdefault(key, a)
        self._calendar_minute: tuple[int, int] | None = None
        self._calendar_blocked = np.zeros(n, dtype=np.int8)

    @classmethod
    def from_park(cls, park: Park) -> LimitModel:
        return cls([a for _, a in park.iter_assets()], park.tz)

    # --- per cycle ---------------------------------------------------------------------------

    def compute(
        self,
        snapshot: Snapshot,
        now: datetime,
        *,
        horizon_s: float,
        period_s: float,
        notice_min: float | None = None,
        pv_available_kw: FloatArray | None = None,
    ) -> Limits:
        """Limits for the period starting `now`.

        `horizon_s` is how long a setpoint may stay in force (energy limits must hold that
        long); `period_s` is the control period (ramp limits apply over it). `notice_min` is
        how long before now the deviation in force was announced (None: no deviation, so the
        notice terms do not apply). `pv_available_kw` is the generation (positive) each PV
        could deliver uncurtailed; by default its measured output.
        """
        if horizon_s <= 0 or period_s <= 0:
            raise ValueError("LimitModel.compute: horizon_s and period_s must be positive")
        p = snapshot.power_kw
        lower = self.static_lower_kw.copy()
        upper = self.static_upper_kw.copy()
        blocked = self._calendar(now).copy()
        hours = horizon_s / 3600.0

        # Batteries: the energy left to the SoC bounds over the horizon.
        soc = snapshot.soc_fraction
        known_soc = self.battery & ~np.isnan(soc)
        with np.errstate(invalid="ignore"):
            room_up = np.maximum(self.soc_max - soc, 0.0) * self.capacity_kwh
            room_down = np.maximum(soc - self.soc_min, 0.0) * self.capacity_kwh
            max_charge = room_up / (self.charge_eff * hours)
            max_discharge = room_down * self.discharge_eff / hours
        upper = np.where(known_soc, np.minimum(upper, max_charge), upper)
        lower = np.where(known_soc, np.maximum(lower, -max_discharge), lower)

        # PV: curtail between its available generation and zero.
        available = (
            -p
            if pv_available_kw is None
            else np.where(np.isnan(pv_available_kw), -p, pv_available_kw)
        )
        pv_room = self.pv & ~np.isnan(available)
        lower = np.where(pv_room, np.maximum(lower, -np.maximum(available, 0.0)), lower)
        blocked = np.where(self.pv_fixed, np.int8(Blocked.NOT_CONTROLLABLE), blocked)

        # Curtailable loads: between baseline minus the enrolled reduction and the baseline.
        if self._curtailable_index.size:
            local = now.astimezone(self.tz)
            column = int((local.hour * 60 + local.minute) * PROFILE_POINTS // 1440)
            table = self._weekend_profile if local.weekday() >= 5 else self._weekday_profile
            baseline = table[:, column]
            idx = self._curtailable_index
            upper[idx] = np.minimum(upper[idx], baseline)
            lower[idx] = np.maximum(baseline - self.max_reduction_kw[idx], 0.0)

        # Thermal loads: stay inside the band until the horizon's end at constant power.
        temp = snapshot.temperature_c
        known_temp = self.thermal & ~np.isnan(temp)
        if known_temp.any():
            with np.errstate(invalid="ignore"):
                band_low = (temp - self.temp_min_c) * self.heat_capacity / hours
                band_high = (self.temp_max_c - temp) * self.heat_capacity / hours
                # Heat flowing into the space (kW thermal) with the plant off.
                heat_in = self.loss_kw_per_k * (self.ambient_c - temp) + self.internal_gain_kw
                # Cooling removes cop*P: temp rises unless cop*P >= heat_in - band_high.
                cool_min = (heat_in - band_high) / self.cop
                cool_max = (heat_in + band_low) / self.cop
                # Heating adds cop*P: temp falls unless cop*P >= -heat_in - band_low.
                heat_min = (-heat_in - band_low) / self.cop
                heat_max = (-heat_in + band_high) / self.cop
            need_min = np.where(self.cooling, cool_min, heat_min)
            need_max = np.where(self.cooling, cool_max, heat_max)
            lower = np.where(known_temp, np.clip(need_min, lower, upper), lower)
            upper = np.where(known_temp, np.clip(need_max, lower, upper), upper)

        # Shiftable loads run whole batches (on/off, uninterruptible runs): when a run starts
        # is the schedule's decision, not something to trim every two seconds.
        blocked = np.where(self.shiftable, np.int8(Blocked.SCHEDULED_ONLY), blocked)

        # Generators: a running unit moves within [min, max]; starting one is scheduled.
        running = self.generator & (p < -GENERATOR_RUNNING_KW)
        upper = np.where(running, np.minimum(upper, -self.gen_min_kw), upper)
        blocked = np.where(self.generator & ~running, np.int8(Blocked.GENERATOR_OFF), blocked)

        # Ramp limits around the measured power; the energy and static range win if they
        # leave no overlap (the asset goes as near as its range allows).
        known_p = ~np.isnan(p)
        step = self.ramp_kw_per_s * period_s
        ramp_low = np.where(known_p, p - step, -np.inf)
        ramp_high = np.where(known_p, p + step, np.inf)
        new_lower = np.maximum(lower, ramp_low)
        new_upper = np.minimum(upper, ramp_high)
        overlap = new_lower <= new_upper
        nearest = np.clip(np.where(known_p, p, 0.0), lower, upper)
        lower = np.where(overlap, new_lower, nearest)
        upper = np.where(overlap, new_upper, nearest)

        # Never wider than the static range; a crossed range collapses to its midpoint.
        lower = np.clip(lower, self.static_lower_kw, self.static_upper_kw)
        upper = np.clip(upper, self.static_lower_kw, self.static_upper_kw)
        crossed = lower > upper
        if crossed.any():
            middle = (lower + upper) / 2
            lower = np.where(crossed, middle, lower)
            upper = np.where(crossed, middle, upper)

        if notice_min is not None:
            late = self.notice_min > notice_min
            blocked = np.where(late & (blocked == 0), np.int8(Blocked.NOTICE), blocked)
        no_data = ~snapshot.fresh | ~known_p
        blocked = np.where(no_data, np.int8(Blocked.NO_TELEMETRY), blocked)

        hold = np.clip(np.where(known_p, p, 0.0), self.static_lower_kw, self.static_upper_kw)
        free = blocked == 0
        return Limits(
            lower_kw=np.where(free, lower, hold),
            upper_kw=np.where(free, upper, hold),
            blocked=blocked.astype(np.int8),
        )

    def _calendar(self, now: datetime) -> npt.NDArray[np.int8]:
        """Outside-hours flags, recomputed only when the local minute changes."""
        local = now.astimezone(self.tz)
        key = (local.toordinal(), local.hour * 60 + local.minute)
        if key != self._calendar_minute:
            minute = local.hour * 60 + local.minute + local.second / 60
            flags = np.zeros(self.n, dtype=np.int8)
            for group_key, members in self._terms_groups.items():
                terms = self._terms_of[group_key].terms
                if not terms.available_at(local.weekday(), minute):
                    flags[members] = Blocked.OUTSIDE_HOURS
            self._calendar_blocked = flags
            self._calendar_minute = key
        return self._calendar_blocked


class PvAvailability:
    """What each PV array could generate now, also while a cap holds it below that.

    An uncapped array shows its available power in its output; a capped one shows only its
    cap. The estimate is the clear-sky output of the array (`vpp.solar`) times a ratio learnt
    whenever the array runs uncapped in daylight (clouds, soiling, shading, model error), and
    never below the measured output. While a cap holds, the ratio relaxes toward clear sky
    (time constant `relax_s`): the estimate then errs high, the loop asks the array for more,
    and the output it gets teaches the ratio again, so a long curtailment cannot hide a sky
    that cleared. Arrays are handled together in numpy arrays, in the order of `assets`.
    """

    def __init__(
        self,
        assets: Sequence[AnyAsset],
        location: Location,
        *,
        relax_s: float = 1800.0,
        learn_fraction: float = 0.05,
        max_ratio: float = 1.5,
    ) -> None:
        if relax_s <= 0 or not 0 < learn_fraction < 1 or max_ratio < 1:
            raise ValueError("PvAvailability: relax_s > 0, 0 < learn_fraction < 1, max_ratio >= 1")
        self.location = location
        self.relax_s = relax_s
        self.max_ratio = max_ratio
        n = len(assets)
        self.pv = np.array([isinstance(a, PvAsset) for a in assets], dtype=np.bool_)
        self._index = np.flatnonzero(self.pv)
        pvs = [a for a in assets if isinstance(a, PvAsset)]
        self._tilt = np.array([a.tilt_deg for a in pvs], dtype=np.float64)
        self._azimuth = np.array([a.azimuth_deg for a in pvs], dtype=np.float64)
        self._kwp = np.array([a.capacity_kwp for a in pvs], dtype=np.float64)
        self._ratio_pr = np.array([a.performance_ratio for a in pvs], dtype=np.float64)
        self.max_output_kw = np.zeros(n)
        self.max_output_kw[self._index] = [a.max_output_kw for a in pvs]
        # Below this clear-sky output (dawn, dusk) a ratio is mostly noise: keep the last one.
        self._learn_kw = learn_fraction * self.max_output_kw
        self.ratio = np.where(self.pv, 1.0, np.nan)
        self.estimate_kw = np.full(n, np.nan)
        self._clear_at: float | None = None
        self._clear_kw = np.zeros(n)
        self._updated_at: float | None = None

    def clear_sky_kw(self, now: datetime) -> FloatArray:
        """Clear-sky AC output of every array at `now` (0 for other assets and at night)."""
        t = now.timestamp()
        if t != self._clear_at:
            clear = np.zeros(self.pv.shape[0])
            if self._index.size:
                position = solar.solar_position(
                    self.location.latitude_deg, self.location.longitude_deg, np.array([t])
                )
                irradiance = solar.clear_sky_irradiance(position, self.location.altitude_m)
                poa = solar.poa_irradiance(
                    irradiance,
                    position.zenith_deg,
                    position.azimuth_deg,
                    self._tilt,
                    self._azimuth,
                )
                clear[self._index] = solar.pv_ac_kw(
                    poa, self._kwp, self._ratio_pr, self.max_output_kw[self._index]
                )
            self._clear_kw = clear
            self._clear_at = t
        return self._clear_kw

    def update(
        self, now: datetime, power_kw: FloatArray, fresh: BoolArray, uncapped: BoolArray
    ) -> FloatArray:
        """Learn from the latest readings; returns the available generation (kW, >= 0) of
        every array (NaN for other assets).

        `uncapped` marks the arrays whose output no cap holds back (no cap in force, or the
        output clearly below it).
        """
        t = now.timestamp()
        clear = self.clear_sky_kw(now)
        output = np.where(self.pv & fresh & ~np.isnan(power_kw), np.maximum(-power_kw, 0.0), 0.0)
        learn = self.pv & fresh & uncapped & (clear > self._learn_kw)
        held = self.pv & ~(fresh & uncapped)
        if self._updated_at is not None and t > self._updated_at:
            pull = 1.0 - math.exp(-(t - self._updated_at) / self.relax_s)
            self.ratio = np.where(held, self.ratio + (1.0 - self.ratio) * pull, self.ratio)
        self._updated_at = t
        with np.errstate(divide="ignore", invalid="ignore"):
            seen = np.clip(output / clear, 0.0, self.max_ratio)
        self.ratio = np.where(learn, seen, self.ratio)
        # A capped array gives at least what it shows.
        self.ratio = np.where(
            held & (clear > self._learn_kw), np.fmax(self.ratio, seen), self.ratio
        )
        estimate = np.where(
            self.pv & fresh & uncapped, output, np.maximum(self.ratio * clear, output)
        )
        self.estimate_kw = np.where(self.pv, np.minimum(estimate, self.max_output_kw), np.nan)
        return self.estimate_kw


def snapshot_of(model: LimitModel, measurements: Sequence[Measurement | None]) -> Snapshot:
    """A snapshot from measurements in model order (None = nothing known), all taken as fresh."""
    snap = Snapshot.empty(model.n)
    for i, m in enumerate(measurements):
        if m is None:
            continue
        snap.power_kw[i] = m.power_kw
        snap.soc_fraction[i] = np.nan if m.soc_fraction is None else m.soc_fraction
        snap.temperature_c[i] = np.nan if m.temperature_c is None else m.temperature_c
        snap.fresh[i] = m.available
    return snap


def asset_limits(
    asset: AnyAsset,
    measurement: Measurement | None,
    now: datetime,
    tz: tzinfo,
    *,
    horizon_s: float,
    period_s: float,
    notice_min: float | None = None,
) -> tuple[PowerLimits, Blocked]:
    """Limits of one asset (for tools and tests; the control loop uses `LimitModel`)."""
    model = LimitModel([asset], tz)
    limits = model.compute(
        snapshot_of(model, [measurement]),
        now,
        horizon_s=horizon_s,
        period_s=period_s,
        notice_min=notice_min,
    )
    return (
        PowerLimits(float(limits.lower_kw[0]), float(limits.upper_kw[0])),
        Blocked(int(limits.blocked[0])),
    )
