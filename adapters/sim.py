"""Simulated assets: physics per asset kind behind the same Adapter interface as real devices.

Each kind has a model class usable on its own (device emulators wrap them): `step(now, dt_s)`
advances physics over the `dt_s` seconds ending at `now`, `apply(setpoint)` takes a command,
`measure(now)` reads it. `SimAdapter` runs many models on an injected clock, delivering one
batch of measurements per telemetry period to a sink, and answers setpoints with acks.

Setpoint semantics: the value is the power the asset is asked to draw (positive drawn, negative
injected). Every model clamps the request to what it can physically do in the next step (see
each class and docs/simulator.md); once `valid_until` passes the device returns to local
control. Connection faults come from `SimConnection`: a first-order response lag, an
under-delivery fraction of the requested change from local-control power, and random dropouts
(no telemetry, no acks). Every random draw comes from a per-asset seeded generator.
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import functools
import logging
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo

import numpy as np

from adapters.base import Adapter, AdapterHealth, ConnectionState, TelemetrySink
from vpp import solar
from vpp.clock import Clock
from vpp.config.schema import (
    AnyAsset,
    BatteryAsset,
    CurtailableLoad,
    Enterprise,
    EvCharging,
    Generator,
    Location,
    Park,
    PvAsset,
    ShiftableLoad,
    SimConnection,
    ThermalLoad,
)
from vpp.domain import AssetKind, Measurement, Setpoint, SetpointAck

log = logging.getLogger(__name__)

CHUNK_SIZE = 2048  # models stepped and delivered between two yields to the event loop
DEFAULT_DROPOUT_MEAN_S = 300.0
DEFAULT_CLOUDINESS = 0.2
CLOUD_CORRELATION_S = 900.0  # clouds change over a quarter of an hour, not per reading
LOAD_NOISE_CORRELATION_S = 600.0
EPSILON_KW = 1e-6
ONE_DAY = timedelta(days=1)


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _midpoint(now: datetime, dt_s: float) -> datetime:
    return now - timedelta(seconds=dt_s / 2) if dt_s > 0 else now


def _positive(energy_kwh: float) -> float:
    """A shortfall, with float residue of an energy balance (below 1 Wh) taken as none."""
    return energy_kwh if energy_kwh > 1e-3 else 0.0


# --- site conditions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conditions:
    """What every model at one site needs to know about a moment, computed once per tick."""

    at: datetime
    epoch_s: float
    local_date: date
    weekday: int  # Monday = 0, local
    minute_of_day: float  # local


@dataclass(frozen=True, slots=True)
class Sun:
    """Sun position and clear-sky irradiance at one moment (computed only when PV asks)."""

    at: datetime
    zenith_deg: float
    azimuth_deg: float
    dni_extra_w_m2: float
    ghi_clear_w_m2: float


class Site:
    """Location and timezone shared by the models of a park; caches the conditions of a tick."""

    def __init__(
        self,
        location: Location,
        timezone: str | ZoneInfo,
        linke_turbidity: float = solar.DEFAULT_LINKE_TURBIDITY,
        albedo: float = solar.DEFAULT_ALBEDO,
    ) -> None:
        self.location = location
        self.tz = timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone)
        self.linke_turbidity = linke_turbidity
        self.albedo = albedo
        self._cached: Conditions | None = None
        self._cached_sun: Sun | None = None

    @classmethod
    def of(cls, park: Park) -> Site:
        return cls(park.location, park.tz)

    def conditions(self, now: datetime) -> Conditions:
        cached = self._cached
        if cached is not None and cached.at == now:
            return cached
        local = now.astimezone(self.tz)
        cached = Conditions(
            at=now,
            epoch_s=now.timestamp(),
            local_date=local.date(),
            weekday=local.weekday(),
            minute_of_day=local.hour * 60
            + local.minute
            + (local.second + local.microsecond / 1e6) / 60,
        )
        self._cached = cached
        return cached

    def sun(self, now: datetime) -> Sun:
        cached = self._cached_sun
        if cached is not None and cached.at == now:
            return cached
        position = solar.solar_position(
            self.location.latitude_deg, self.location.longitude_deg, np.array([now.timestamp()])
        )
        ghi = solar.clear_sky_ghi(
            position.zenith_deg,
            position.dni_extra_w_m2,
            self.location.altitude_m,
            self.linke_turbidity,
        )
        cached = Sun(
            at=now,
            zenith_deg=float(position.zenith_deg[0]),
            azimuth_deg=float(position.azimuth_deg[0]),
            dni_extra_w_m2=float(position.dni_extra_w_m2[0]),
            ghi_clear_w_m2=float(ghi[0]),
        )
        self._cached_sun = cached
        return cached

    def local_epoch(self, day: date, minute_of_day: float) -> float:
        """Epoch seconds of a local wall-clock minute on a local date."""
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return midnight.timestamp() + minute_of_day * 60.0


# --- the common model -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How models are built: seed, fault settings and weather."""

    seed: int = 0  # the adapter's seed; an asset's SimConnection.seed takes precedence
    connection: SimConnection | None = None  # default: the asset's own, else defaults
    cloudiness: float = DEFAULT_CLOUDINESS  # 0 = always clear sky
    dropout_mean_s: float = DEFAULT_DROPOUT_MEAN_S  # mean length of a random dropout


class SimModel(abc.ABC):
    """Physics, local control and connection faults of one simulated asset.

    Subclasses provide `_advance` (exogenous changes: weather, profile, arrivals), `_range`
    (what power is physically possible over the next step), `_local_kw` (local control),
    and `_integrate` (state update for the delivered power). `_project` maps a request onto
    the feasible set; `_follow` applies the response dynamics.
    """

    kind: ClassVar[AssetKind]

    def __init__(self, asset: AnyAsset, site: Site, options: SimOptions | None = None) -> None:
        options = options if options is not None else SimOptions()
        connection = options.connection
        if connection is None:
            connection = (
                asset.connection if isinstance(asset.connection, SimConnection) else SimConnection()
            )
        self.asset_id = asset.id
        self.site = site
        self.connection = connection
        self.telemetry_period_s = connection.telemetry_period_s
        self.response_lag_s = connection.response_lag_s
        self.under_delivery_fraction = connection.under_delivery_fraction
        self.dropout_probability_per_h = connection.dropout_probability_per_h
        self.dropout_mean_s = options.dropout_mean_s
        # a string seed is hashed with SHA-512: stable across processes, unlike hash()
        self.rng = random.Random(
            connection.seed if connection.seed is not None else f"{options.seed}/{asset.id}"
        )
        self.power_kw = 0.0
        self.imported_kwh = 0.0
        self.exported_kwh = 0.0
        self.setpoint: Setpoint | None = None
        self.silent_until: datetime | None = None
        self.held_silent = False
        self.last_step_at: datetime | None = None
        self._range_dt_s = connection.telemetry_period_s

    # --- public interface -------------------------------------------------------------------

    @property
    def energy_kwh(self) -> float:
        """Net meter reading: energy drawn minus energy injected since the model started."""
        return self.imported_kwh - self.exported_kwh

    def step(self, now: datetime, dt_s: float) -> None:
        """Advance physics over the `dt_s` seconds that end at `now`.

        Weather, profiles and time windows are read at the middle of the step: the energy of
        a step is then right to second order, and a window opening at 22:00 is first used by
        the step that starts at 22:00. A step of zero or negative length changes no state.
        """
        dt_s = max(dt_s, 0.0)
        self._advance(self.site.conditions(_midpoint(now, dt_s)), dt_s)
        self._respond(now, dt_s)

    def apply(self, setpoint: Setpoint) -> float:
        """Take a command; returns the power the device will aim for, clamped to its state."""
        self.setpoint = setpoint
        low, high = self._range(self._range_dt_s)
        return self._project(setpoint.power_kw, low, high)

    def release(self) -> None:
        """Drop the engine's command: back to local control."""
        self.setpoint = None

    def measure(self, now: datetime) -> Measurement:
        # positional: Measurement(asset_id, timestamp, power_kw, soc, temperature, energy)
        return Measurement(
            self.asset_id, now, self.power_kw, None, None, self.imported_kwh - self.exported_kwh
        )

    def is_silent(self, now: datetime) -> bool:
        """Whether the device is dropped out: it sends no telemetry and answers no command."""
        if self.held_silent:
            return True
        until = self.silent_until
        return until is not None and now < until

    def local_power_kw(self) -> float:
        """What local control would draw over the next step."""
        low, high = self._range(self._range_dt_s)
        return _clamp(self._local_kw(), low, high)

    def limits_kw(self) -> tuple[float, float]:
        """The power range physically possible over the next telemetry period."""
        return self._range(self._range_dt_s)

    # --- the shared pipeline ----------------------------------------------------------------

    def _respond(self, now: datetime, dt_s: float) -> None:
        if dt_s > 0 and self.dropout_probability_per_h > 0 and not self.is_silent(now):
            self._maybe_drop(now, dt_s)
        setpoint = self.setpoint
        if setpoint is not None and now >= setpoint.valid_until:
            self.setpoint = setpoint = None
        low, high = self._range(dt_s)
        local = _clamp(self._local_kw(), low, high)
        if setpoint is None:
            target = local
        else:
            request = self._project(setpoint.power_kw, low, high)
            target = local + (1.0 - self.under_delivery_fraction) * (request - local)
        power = self._follow(now, target, dt_s, low, high)
        self._integrate(now, power, dt_s, local)
        if dt_s > 0:
            hours = dt_s / 3600.0
            if power >= 0:
                self.imported_kwh += power * hours
            else:
                self.exported_kwh -= power * hours
        self.power_kw = power
        self.last_step_at = now
        if dt_s > 0:
            self._range_dt_s = dt_s

    def _lagged(self, target: float, dt_s: float) -> float:
        lag = self.response_lag_s
        if lag <= 0:
            return target
        if dt_s <= 0:
            return self.power_kw
        return self.power_kw + (target - self.power_kw) * (1.0 - math.exp(-dt_s / lag))

    def _maybe_drop(self, now: datetime, dt_s: float) -> None:
        # the configured figure is read as a Poisson rate per hour: for small values it is the
        # chance of a dropout within an hour, and 1.0 still leaves the device mostly online
        chance = 1.0 - math.exp(-self.dropout_probability_per_h * dt_s / 3600.0)
        if self.rng.random() < chance:
            silent_s = self.rng.expovariate(1.0 / self.dropout_mean_s)
            self.silent_until = now + timedelta(seconds=silent_s)

    # --- per kind ---------------------------------------------------------------------------

    def _advance(self, conditions: Conditions, dt_s: float) -> None:  # noqa: B027 (optional hook)
        """Exogenous changes over the step (weather, profile, arrivals); none by default."""

    @abc.abstractmethod
    def _range(self, dt_s: float) -> tuple[float, float]:
        """The power range physically possible over a step of `dt_s` from the current state."""

    def _local_kw(self) -> float:
        return 0.0

    def _project(self, request_kw: float, low: float, high: float) -> float:
        if math.isnan(request_kw):
            return _clamp(0.0, low, high)
        return _clamp(request_kw, low, high)

    def _follow(self, now: datetime, target: float, dt_s: float, low: float, high: float) -> float:
        return _clamp(self._lagged(target, dt_s), low, high)

    def _integrate(  # noqa: B027 (optional hook)
        self, now: datetime, power_kw: float, dt_s: float, local_kw: float
    ) -> None:
        """State update for the power delivered over the step; stateless kinds do nothing."""

    @classmethod
    def step_all(cls, models: Sequence[SimModel], now: datetime, dt_s: float) -> None:
        """Step many models of this class; subclasses vectorise what is costly per model."""
        if not models:
            return
        dt_s = max(dt_s, 0.0)
        conditions = models[0].site.conditions(_midpoint(now, dt_s))
        for model in models:
            model._advance(conditions, dt_s)
            model._respond(now, dt_s)


# --- battery ----------------------------------------------------------------------------------


class BatteryModel(SimModel):
    """Battery: SoC integrates charge × η_c and discharge ÷ η_d; power, ramp and SoC limits.

    Setpoint: charge (positive) or discharge (negative) power, clamped to the rating, the ramp
    and the energy left before soc_min / soc_max within the step. Local control: idle.
    """

    kind = AssetKind.BATTERY

    def __init__(self, asset: BatteryAsset, site: Site, options: SimOptions | None = None) -> None:
        super().__init__(asset, site, options)
        self.asset = asset
        self.capacity_kwh = asset.capacity_kwh
        self.soc = asset.soc_initial
        self.soc_min = asset.soc_min
        self.soc_max = asset.soc_max
        self.max_charge_kw = asset.max_charge_kw
        self.max_discharge_kw = asset.power_kw
        self.charge_efficiency = asset.charge_efficiency
        self.discharge_efficiency = asset.discharge_efficiency
        self.ramp_kw_per_s = asset.ramp_kw_per_s

    def _range(self, dt_s: float) -> tuple[float, float]:
        if dt_s <= 0:
            return -self.max_discharge_kw, self.max_charge_kw
        hours = dt_s / 3600.0
        room_kwh = max(self.soc_max - self.soc, 0.0) * self.capacity_kwh
        stored_kwh = max(self.soc - self.soc_min, 0.0) * self.capacity_kwh
        charge = min(self.max_charge_kw, room_kwh / (self.charge_efficiency * hours))
        discharge = min(self.max_discharge_kw, stored_kwh * self.discharge_efficiency / hours)
        return -discharge, charge

    def _follow(self, now: datetime, target: float, dt_s: float, low: float, high: float) -> float:
        power = self._lagged(target, dt_s)
        if self.ramp_kw_per_s is not None:
            step = self.ramp_kw_per_s * dt_s
            power = _clamp(power, self.power_kw - step, self.power_kw + step)
        return _clamp(power, low, high)

    def _integrate(self, now: datetime, power_kw: float, dt_s: float, local_kw: float) -> None:
        hours = dt_s / 3600.0
        if power_kw >= 0:
            stored = power_kw * self.charge_efficiency * hours
        else:
            stored = power_kw / self.discharge_efficiency * hours
        self.soc = _clamp(self.soc + stored / self.capacity_kwh, self.soc_min, self.soc_max)

    def measure(self, now: datetime) -> Measurement:
        return Measurement(
            self.asset_id, now, self.power_kw, self.soc, None, self.imported_kwh - self.exported_kwh
        )


# --- PV ---------------------------------------------------------------------------------------


class PvModel(SimModel):
    """PV array: clear-sky output from vpp.solar times a correlated cloud index.

    Setpoint: a cap on injection (-300 = inject at most 300 kW; 0 or more = fully curtailed);
    a non-curtailable array ignores it. Local control: all that is available (MPPT).
    Clouds: an Ornstein-Uhlenbeck process x (correlation time 15 min) gives the clear-sky
    index k = clip(1 - cloudiness·|x|, 0.05, 1).
    """

    kind = AssetKind.PV

    def __init__(self, asset: PvAsset, site: Site, options: SimOptions | None = None) -> None:
        super().__init__(asset, site, options)
        self.asset = asset
        self.cloudiness = options.cloudiness if options is not None else DEFAULT_CLOUDINESS
        self.cloud_state = self.rng.gauss(0.0, 1.0)
        self.available_kw = 0.0

    @property
    def clear_sky_index(self) -> float:
        return _clamp(1.0 - self.cloudiness * abs(self.cloud_state), 0.05, 1.0)

    def _advance_clouds(self, dt_s: float) -> None:
        if dt_s <= 0 or self.cloudiness <= 0:
            return
        rho = math.exp(-dt_s / CLOUD_CORRELATION_S)
        self.cloud_state = rho * self.cloud_state + math.sqrt(1 - rho * rho) * self.rng.gauss(
            0.0, 1.0
        )

    def _advance(self, conditions: Conditions, dt_s: float) -> None:
        self._advance_clouds(dt_s)
        self.available_kw = float(
            _pv_available(
                self.site.sun(conditions.at),
                self.site,
                np.array([self.clear_sky_index]),
                np.array([self.asset.tilt_deg]),
                np.array([self.asset.azimuth_deg]),
                np.array([self.asset.capacity_kwp]),
                np.array([self.asset.performance_ratio]),
                np.array([self.asset.max_output_kw]),
            )[0]
        )

    @classmethod
    def step_all(cls, models: Sequence[SimModel], now: datetime, dt_s: float) -> None:
        pvs = [m for m in models if isinstance(m, PvModel)]
        if not pvs:
            return
        dt_s = max(dt_s, 0.0)
        sun = pvs[0].site.sun(_midpoint(now, dt_s))
        for model in pvs:
            model._advance_clouds(dt_s)
        if sun.ghi_clear_w_m2 <= 0:
            available: Iterable[float] = [0.0] * len(pvs)
        else:
            available = _pv_available(
                sun,
                pvs[0].site,
                np.fromiter((m.clear_sky_index for m in pvs), float, len(pvs)),
                np.fromiter((m.asset.tilt_deg for m in pvs), float, len(pvs)),
                np.fromiter((m.asset.azimuth_deg for m in pvs), float, len(pvs)),
                np.fromiter((m.asset.capacity_kwp for m in pvs), float, len(pvs)),
                np.fromiter((m.asset.performance_ratio for m in pvs), float, len(pvs)),
                np.fromiter((m.asset.max_output_kw for m in pvs), float, len(pvs)),
            ).tolist()
        for model, value in zip(pvs, available, strict=True):
            model.available_kw = value
            model._respond(now, dt_s)

    def _range(self, dt_s: float) -> tuple[float, float]:
        if not self.asset.curtailable:
            return -self.available_kw, -self.available_kw
        return -self.available_kw, 0.0

    def _local_kw(self) -> float:
        return -self.available_kw


def _pv_available(
    sun: Sun,
    site: Site,
    clear_sky_index: np.ndarray,
    tilt_deg: np.ndarray,
    azimuth_deg: np.ndarray,
    capacity_kwp: np.ndarray,
    performance_ratio: np.ndarray,
    max_output_kw: np.ndarray,
) -> np.ndarray:
    if sun.ghi_clear_w_m2 <= 0:
        return np.zeros_like(clear_sky_index)
    irradiance = solar.erbs(
        sun.ghi_clear_w_m2 * clear_sky_index, sun.zenith_deg, sun.dni_extra_w_m2
    )
    poa = solar.poa_irradiance(
        irradiance,
        sun.zenith_deg,
        sun.azimuth_deg,
        tilt_deg,
        azimuth_deg,
        site.albedo,
    )
    return solar.pv_ac_kw(poa, capacity_kwp, performance_ratio, max_output_kw)


# --- curtailable load -------------------------------------------------------------------------


class CurtailableLoadModel(SimModel):
    """Process load following its profile with correlated noise; reductions are limited.

    Setpoint: the power to draw; it can only be lower than the local load, by at most
    max_reduction_kw. A reduction lasting max_duration_min is force-released. A released
    reduction rebounds: rebound_fraction of the curtailed energy is owed, and drawn on top of
    the profile at the rate that repays it over rebound_window_min, within the headroom under
    the profile's peak (the process's enrolled maximum), so a rebound at peak hour takes
    longer. No new reduction starts for min_rest_min (after a forced release, at least the
    rebound window). Local control: the profile plus any rebound owed.
    """

    kind = AssetKind.CURTAILABLE_LOAD

    def __init__(
        self, asset: CurtailableLoad, site: Site, options: SimOptions | None = None
    ) -> None:
        super().__init__(asset, site, options)
        self.asset = asset
        profile = asset.profile
        self._weekday = tuple(profile.weekday_kw)
        self._weekend = tuple(profile.weekend_kw) if profile.weekend_kw is not None else None
        self.noise_fraction = profile.noise_fraction
        self.noise_state = self.rng.gauss(0.0, 1.0)
        self.max_reduction_kw = asset.max_reduction_kw
        self.max_duration_s = asset.max_duration_min * 60.0
        self.rebound_window_s = asset.rebound_window_min * 60.0
        self.peak_kw = profile.peak_kw
        self.baseline_kw = 0.0
        self.rebound_owed_kwh = 0.0
        self.rebound_rate_kw = 0.0
        self.rebound_kw = 0.0  # the rebound drawn in the current step
        self.rest_until: datetime | None = None
        self.curtailing = False
        self.curtailed_s = 0.0
        self.curtailed_kwh = 0.0
        self.events = 0
        self.forced_releases = 0

    def _advance(self, conditions: Conditions, dt_s: float) -> None:
        values = self._weekend if conditions.weekday >= 5 and self._weekend else self._weekday
        index = int(conditions.minute_of_day * len(values) // 1440) % len(values)
        if dt_s > 0 and self.noise_fraction > 0:
            rho = math.exp(-dt_s / LOAD_NOISE_CORRELATION_S)
            self.noise_state = rho * self.noise_state + math.sqrt(1 - rho * rho) * self.rng.gauss(
                0.0, 1.0
            )
        noisy = values[index] * (1.0 + self.noise_fraction * self.noise_state)
        self.baseline_kw = _clamp(noisy, 0.0, self.peak_kw)
        if self.rebound_owed_kwh > 0 and dt_s > 0:
            self.rebound_kw = min(
                self.rebound_rate_kw,
                self.peak_kw - self.baseline_kw,
                self.rebound_owed_kwh / (dt_s / 3600.0),
            )
        else:
            self.rebound_kw = 0.0

    def _local_kw(self) -> float:
        return self.baseline_kw + self.rebound_kw

    def _range(self, dt_s: float) -> tuple[float, float]:
        local = self.baseline_kw + self.rebound_kw
        if self.rest_until is not None:
            return local, local
        return max(local - self.max_reduction_kw, 0.0), local

    def _integrate(self, now: datetime, power_kw: float, dt_s: float, local_kw: float) -> None:
        hours = dt_s / 3600.0
        if self.rebound_kw > 0:  # what was drawn above the profile repays the rebound owed
            repaid = _clamp(power_kw - self.baseline_kw, 0.0, self.rebound_kw) * hours
            self.rebound_owed_kwh = max(self.rebound_owed_kwh - repaid, 0.0)
            if self.rebound_owed_kwh < 1e-9:
                self.rebound_owed_kwh = 0.0
        setpoint = self.setpoint
        asked = (
            setpoint is not None
            and setpoint.power_kw < local_kw - EPSILON_KW
            and self.rest_until is None
        )
        if asked:
            if not self.curtailing:
                self.curtailing = True
                self.events += 1
            self.curtailed_s += dt_s
            self.curtailed_kwh += max(local_kw - power_kw, 0.0) * hours
            if self.curtailed_s >= self.max_duration_s:
                self.forced_releases += 1
                self._end_curtailment(now, forced=True)
        elif self.curtailing:
            self._end_curtailment(now, forced=False)
        # the rest covers the steps that end by its deadline
        if self.rest_until is not None and now >= self.rest_until:
            self.rest_until = None

    def _end_curtailment(self, now: datetime, forced: bool) -> None:
        owed = self.rebound_owed_kwh + self.asset.rebound_fraction * self.curtailed_kwh
        if owed > 0:
            self.rebound_owed_kwh = owed
            self.rebound_rate_kw = owed / (self.rebound_window_s / 3600.0)
        rest_s = self.asset.min_rest_min * 60.0
        if forced:
            rest_s = max(rest_s, self.rebound_window_s)
        if rest_s > 0:
            self.rest_until = now + timedelta(seconds=rest_s)
        self.curtailing = False
        self.curtailed_s = 0.0
        self.curtailed_kwh = 0.0


# --- shiftable load ---------------------------------------------------------------------------


class ShiftableLoadModel(SimModel):
    """Batch load running runs_per_day runs of energy_per_run_kwh at power_kw in its windows.

    The day starts at the first allowed minute after the longest forbidden gap, so a night
    window across midnight belongs to one day. Setpoint: > 0 starts (or resumes) a run, 0
    defers it or, when interruptible, pauses it; an uninterruptible run goes on to its end.
    Local control starts at default_start (else as soon as a window opens) and runs back to
    back; it also forces a start when the windows left in the day are just long enough.
    """

    kind = AssetKind.SHIFTABLE_LOAD

    def __init__(self, asset: ShiftableLoad, site: Site, options: SimOptions | None = None) -> None:
        super().__init__(asset, site, options)
        self.asset = asset
        spans = tuple((w.start_minute, w.end_minute) for w in asset.windows)
        self.anchor_minute, self._allowed, self._left_min = _window_tables(spans)
        if asset.default_start is not None:
            start = asset.default_start.hour * 60 + asset.default_start.minute
            self.local_start_minute = (start - self.anchor_minute) % 1440
        else:
            self.local_start_minute = 0
        self.quota_kwh = asset.energy_per_run_kwh * asset.runs_per_day
        self.day: int | None = None
        self.done_kwh = 0.0
        self.run_kwh = 0.0  # progress of the current run
        self.running = False
        self.missed_kwh = 0.0
        self.runs_completed = 0
        self._minute = 0.0
        self._must_run = False
        self._partial_day = False

    def _advance(self, conditions: Conditions, dt_s: float) -> None:
        shifted = conditions.minute_of_day - self.anchor_minute
        day = conditions.local_date.toordinal() + (-1 if shifted < 0 else 0)
        minute = shifted % 1440
        if self.day is None:
            self.day = day
            self._partial_day = True
        elif day != self.day:
            # an uninterruptible run under way finishes for the old day's quota
            carry = self.running and not self.asset.interruptible
            left = self._run_left() if carry else 0.0
            if not self._partial_day:  # a day the model only saw part of is not judged
                self.missed_kwh += _positive(self.quota_kwh - self.done_kwh - left)
            self._partial_day = False
            self.done_kwh = -left
            if not carry:
                self.run_kwh = 0.0
                self.running = False
            self.day = day
        self._minute = minute
        remaining_min = (self.quota_kwh - self.done_kwh) / self.asset.power_kw * 60.0
        window_left = self._left_min[int(minute)] - (minute - int(minute))
        self._must_run = (
            remaining_min > EPSILON_KW and window_left <= remaining_min + dt_s / 60.0 + 1.0
        )

    def _run_left(self) -> float:
        return max(self.asset.energy_per_run_kwh - self.run_kwh, 0.0)

    def _in_window(self) -> bool:
        return self._allowed[int(self._minute) % 1440]

    def _range(self, dt_s: float) -> tuple[float, float]:
        if self.done_kwh >= self.quota_kwh - EPSILON_KW:
            return 0.0, 0.0
        locked = self.running and not self.asset.interruptible
        if not locked and not self._in_window():
            return 0.0, 0.0
        high = self.asset.power_kw
        if dt_s > 0:
            high = min(high, self._run_left() / (dt_s / 3600.0))
        if locked or self._must_run:
            return high, high
        return 0.0, high

    def _local_kw(self) -> float:
        if self.running or self._minute >= self.local_start_minute:
            return self.asset.power_kw
        return 0.0

    def _project(self, request_kw: float, low: float, high: float) -> float:
        return high if request_kw > EPSILON_KW else low

    def _integrate(self, now: datetime, power_kw: float, dt_s: float, local_kw: float) -> None:
        energy = power_kw * dt_s / 3600.0
        self.done_kwh += energy
        self.run_kwh += energy
        if self.run_kwh >= self.asset.energy_per_run_kwh - 1e-9:
            self.runs_completed += 1
            self.run_kwh = 0.0
            self.running = False
        else:
            self.running = power_kw > EPSILON_KW or (self.running and not self._paused())

    def _paused(self) -> bool:
        setpoint = self.setpoint
        return self.asset.interruptible and setpoint is not None and setpoint.power_kw <= EPSILON_KW


@functools.cache
def _window_tables(
    spans: tuple[tuple[int, int], ...],
) -> tuple[int, tuple[bool, ...], tuple[int, ...]]:
    """Day anchor, allowed minutes counted from it, and allowed minutes left to the day's end.

    Shared by every load with the same windows: a park has thousands of identical ones.
    """
    allowed = [False] * 1440
    for start, end in spans:
        length = (end - start) % 1440 or 1440
        for m in range(start, start + length):
            allowed[m % 1440] = True
    anchor = _day_anchor(allowed)
    rotated = tuple(allowed[(anchor + m) % 1440] for m in range(1440))
    left = [0] * 1441
    for m in range(1439, -1, -1):
        left[m] = left[m + 1] + (1 if rotated[m] else 0)
    return anchor, rotated, tuple(left)


def _day_anchor(allowed: list[bool]) -> int:
    """First allowed minute after the longest run of forbidden minutes (0 if all allowed)."""
    if all(allowed) or not any(allowed):
        return 0
    best_length, best_end = -1, 0
    length = 0
    for m in range(2 * 1440):  # twice round so a gap across midnight is seen whole
        if not allowed[m % 1440]:
            length += 1
            continue
        if length > best_length:
            best_length, best_end = length, m % 1440
        length = 0
    return best_end


# --- thermal load -----------------------------------------------------------------------------


class ThermalLoadModel(SimModel):
    """HVAC or cold store: C·dT/dt = UA·(T_amb - T) + gains ∓ COP·P, integrated exactly.

    Setpoint: electric power in [0, rated], overridden so that the temperature at the end of
    each step stays inside [temp_min_c, temp_max_c]. Local control: an on/off thermostat with
    hysteresis between 20 % and 80 % of the band.
    """

    kind = AssetKind.THERMAL_LOAD

    def __init__(self, asset: ThermalLoad, site: Site, options: SimOptions | None = None) -> None:
        super().__init__(asset, site, options)
        self.asset = asset
        self.temperature_c = asset.initial_temp_c
        self.sign = 1.0 if asset.mode == "cooling" else -1.0
        band = asset.temp_max_c - asset.temp_min_c
        if asset.mode == "cooling":
            self.on_at_c = asset.temp_min_c + 0.8 * band
            self.off_at_c = asset.temp_min_c + 0.2 * band
        else:
            self.on_at_c = asset.temp_min_c + 0.2 * band
            self.off_at_c = asset.temp_min_c + 0.8 * band
        self.thermostat_on = False
        self.tau_s = asset.thermal_capacity_kwh_per_k / asset.loss_kw_per_k * 3600.0

    def _response(self, dt_s: float) -> tuple[float, float]:
        """T_end = free - sign·gain·P over a step of dt_s (exact for constant P)."""
        asset = self.asset
        decay = math.exp(-dt_s / self.tau_s)
        equilibrium = asset.ambient_c + asset.internal_gain_kw / asset.loss_kw_per_k
        free = self.temperature_c * decay + (1 - decay) * equilibrium
        gain = (1 - decay) * asset.cop / asset.loss_kw_per_k
        return free, gain

    def _range(self, dt_s: float) -> tuple[float, float]:
        rated = self.asset.rated_power_kw
        if dt_s <= 0:
            return 0.0, rated
        free, gain = self._response(dt_s)
        # T_end = free - sign·gain·P must lie in [temp_min, temp_max]
        bound_a = (free - self.asset.temp_max_c) / (self.sign * gain)
        bound_b = (free - self.asset.temp_min_c) / (self.sign * gain)
        low, high = min(bound_a, bound_b), max(bound_a, bound_b)
        low, high = max(low, 0.0), min(high, rated)
        if low > high:  # the band cannot be held this step: do the most that helps
            point = rated if low >= rated else 0.0
            return point, point
        return low, high

    def _local_kw(self) -> float:
        t = self.temperature_c
        if self.sign > 0:
            if t >= self.on_at_c:
                self.thermostat_on = True
            elif t <= self.off_at_c:
                self.thermostat_on = False
        elif t <= self.on_at_c:
            self.thermostat_on = True
        elif t >= self.off_at_c:
            self.thermostat_on = False
        return self.asset.rated_power_kw if self.thermostat_on else 0.0

    def _integrate(self, now: datetime, power_kw: float, dt_s: float, local_kw: float) -> None:
        if dt_s <= 0:
            return
        free, gain = self._response(dt_s)
        self.temperature_c = free - self.sign * gain * power_kw

    def measure(self, now: datetime) -> Measurement:
        return Measurement(
            self.asset_id,
            now,
            self.power_kw,
            None,
            self.temperature_c,
            self.imported_kwh - self.exported_kwh,
        )


# --- EV depot ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Vehicle:
    """One connected vehicle: what it needs, what it got, when it leaves (epoch seconds)."""

    need_kwh: float
    delivered_kwh: float
    departure_s: float
    arrived_s: float


def _water_fill(total: float, caps: Sequence[float]) -> list[float]:
    """Share `total` equally over slots, no slot above its cap, leftovers to the others."""
    shares = [0.0] * len(caps)
    order = sorted(range(len(caps)), key=caps.__getitem__)
    left = total
    for position, index in enumerate(order):
        share = left / (len(order) - position)
        given = min(caps[index], share)
        shares[index] = given
        left -= given
    return shares


class EvDepotModel(SimModel):
    """EV depot: vehicles arrive (sessions, or Poisson from the arrival profile), charge, leave.

    A session whose energy one charger cannot deliver in its dwell time is a group of vehicles
    and plugs in as many as it needs. Setpoint: a station power cap shared equally over the
    connected vehicles (each at most charger_power_kw and what it still needs); negative with
    v2g discharges what the vehicles received here. Local control: every vehicle at full
    charger power within station_limit_kw.
    """

    kind = AssetKind.EV_CHARGING

    def __init__(self, asset: EvCharging, site: Site, options: SimOptions | None = None) -> None:
        super().__init__(asset, site, options)
        self.asset = asset
        self.station_limit_kw = (
            asset.station_limit_kw if asset.station_limit_kw is not None else math.inf
        )
        self.vehicles: list[Vehicle] = []
        self._pending: list[tuple[float, float, float]] = []  # arrival, departure, energy
        self._scheduled_days: set[date] = set()
        self._scheduled_through: date | None = None
        self.arrived = 0
        self.departed = 0
        self.turned_away = 0
        self.unmet_kwh = 0.0
        self.delivered_kwh = 0.0
        self._started = False

    def _schedule_sessions(self, day: date) -> None:
        if day in self._scheduled_days or not self.asset.sessions:
            return
        self._scheduled_days.add(day)
        for session in self.asset.sessions:
            arrive_min = session.arrival.hour * 60 + session.arrival.minute
            leave_min = session.departure.hour * 60 + session.departure.minute
            if leave_min <= arrive_min:
                leave_min += 1440
            arrival = self.site.local_epoch(day, arrive_min)
            departure = self.site.local_epoch(day, leave_min)
            bisect.insort(self._pending, (arrival, departure, session.energy_kwh))

    def _connect(self, need_kwh: float, departure_s: float, now_s: float) -> None:
        if len(self.vehicles) >= self.asset.chargers:
            self.turned_away += 1
            return
        self.arrived += 1
        self.vehicles.append(Vehicle(need_kwh, 0.0, departure_s, now_s))

    def _connect_session(
        self, energy_kwh: float, arrival_s: float, departure_s: float, now_s: float
    ) -> None:
        """Plug in a session: one vehicle, or as many as its energy needs at charger power.

        A fleet timetable books a group of vehicles as one session (a night's buses); a need
        larger than one charger can deliver in the dwell time is split over that many vehicles.
        """
        dwell_h = (departure_s - arrival_s) / 3600.0
        one_charger_kwh = self.asset.charger_power_kw * dwell_h
        vehicles = max(1, math.ceil(energy_kwh / one_charger_kwh - 1e-9))
        for _ in range(vehicles):
            self._connect(energy_kwh / vehicles, departure_s, now_s)

    def _advance(self, conditions: Conditions, dt_s: float) -> None:
        now_s = conditions.epoch_s
        day = conditions.local_date
        if self.asset.sessions:
            if day != self._scheduled_through:
                for offset in (-1, 0, 1):
                    self._schedule_sessions(day + timedelta(days=offset))
                self._scheduled_through = day
            if not self._started:
                # sessions already under way when the simulation starts are plugged in now
                self._pending = [p for p in self._pending if p[1] > now_s]
            while self._pending and self._pending[0][0] <= now_s:
                arrival, departure, energy = self._pending.pop(0)
                if departure > now_s:
                    if not self._started and arrival < now_s - dt_s / 2:
                        # under way before the first step: as if it had charged evenly
                        energy *= (departure - now_s) / (departure - arrival)
                        arrival = now_s
                    self._connect_session(energy, arrival, departure, now_s)
            if len(self._scheduled_days) > 4:
                self._scheduled_days = {d for d in self._scheduled_days if d >= day - ONE_DAY}
        profile = self.asset.arrival_profile
        if profile is not None and dt_s > 0:
            hour = int(conditions.minute_of_day // 60) % 24
            expected = profile.arrivals_per_hour[hour] * dt_s / 3600.0
            for _ in range(_poisson(self.rng, expected)):
                energy = profile.mean_energy_kwh * self.rng.uniform(0.5, 1.5)
                dwell_s = profile.mean_dwell_h * 3600.0 * self.rng.uniform(0.5, 1.5)
                self._connect(energy, now_s + dwell_s, now_s)
        self._started = True

    def _caps(self, dt_s: float) -> tuple[list[float], list[float]]:
        power = self.asset.charger_power_kw
        hours = dt_s / 3600.0 if dt_s > 0 else math.inf
        charge = [min(power, max(v.need_kwh - v.delivered_kwh, 0.0) / hours) for v in self.vehicles]
        if not self.asset.v2g:
            return charge, []
        discharge = [min(power, max(v.delivered_kwh, 0.0) / hours) for v in self.vehicles]
        return charge, discharge

    def _range(self, dt_s: float) -> tuple[float, float]:
        if not self.vehicles:
            return 0.0, 0.0
        charge, discharge = self._caps(dt_s)
        high = min(sum(charge), self.station_limit_kw)
        low = -min(sum(discharge), self.station_limit_kw) if discharge else 0.0
        return low, high

    def _local_kw(self) -> float:
        return math.inf  # clamped to the range: everything that can charge, charges

    def _integrate(self, now: datetime, power_kw: float, dt_s: float, local_kw: float) -> None:
        if dt_s > 0 and self.vehicles and power_kw != 0:
            charge, discharge = self._caps(dt_s)
            hours = dt_s / 3600.0
            if power_kw > 0:
                shares = _water_fill(power_kw, charge)
            else:
                shares = [-s for s in _water_fill(-power_kw, discharge)]
            for vehicle, share in zip(self.vehicles, shares, strict=True):
                vehicle.delivered_kwh += share * hours
            self.delivered_kwh += power_kw * hours
        now_s = now.timestamp()
        staying: list[Vehicle] = []
        for vehicle in self.vehicles:
            if vehicle.departure_s <= now_s:
                self.departed += 1
                self.unmet_kwh += max(vehicle.need_kwh - vehicle.delivered_kwh, 0.0)
            else:
                staying.append(vehicle)
        self.vehicles = staying

    @property
    def energy_fraction(self) -> float | None:
        """Energy received over energy needed by the connected vehicles (None when empty)."""
        need = sum(v.need_kwh for v in self.vehicles)
        if need <= 0:
            return None
        return _clamp(sum(v.delivered_kwh for v in self.vehicles) / need, 0.0, 1.0)

    def measure(self, now: datetime) -> Measurement:
        return Measurement(
            self.asset_id,
            now,
            self.power_kw,
            self.energy_fraction,
            None,
            self.imported_kwh - self.exported_kwh,
        )


def _poisson(rng: random.Random, expected: float) -> int:
    """Knuth's method: fine for the small means of one telemetry period."""
    if expected <= 0:
        return 0
    if expected > 30:  # a long step: normal approximation
        return max(round(rng.gauss(expected, math.sqrt(expected))), 0)
    threshold = math.exp(-expected)
    count, product = 0, rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


# --- generator --------------------------------------------------------------------------------


class GeneratorModel(SimModel):
    """Generator or CHP: off (0) or output within [min_kw, max_kw], ramp-limited.

    Setpoint: negative output; a request below half of min_kw means off, below min_kw runs at
    min_kw. Starting synchronises straight at min_kw, then ramps; stopping ramps down to
    min_kw and trips, not before min_up_min of running. Local control: off.
    """

    kind = AssetKind.GENERATOR

    def __init__(self, asset: Generator, site: Site, options: SimOptions | None = None) -> None:
        super().__init__(asset, site, options)
        self.asset = asset
        self.running = False
        self.started_at: datetime | None = None
        self.starts = 0

    def _range(self, dt_s: float) -> tuple[float, float]:
        return -self.asset.max_kw, 0.0

    def _project(self, request_kw: float, low: float, high: float) -> float:
        output = -request_kw if math.isfinite(request_kw) else 0.0
        minimum = self.asset.min_kw
        if output <= max(minimum / 2.0, EPSILON_KW):
            return 0.0
        return -_clamp(output, max(minimum, EPSILON_KW), self.asset.max_kw)

    def _follow(self, now: datetime, target: float, dt_s: float, low: float, high: float) -> float:
        asset = self.asset
        target = self._project(target, low, high)  # under-delivery may leave the feasible set
        minimum = max(asset.min_kw, EPSILON_KW)
        if not self.running:
            if target >= 0:
                return 0.0
            self.running = True
            self.started_at = now
            self.starts += 1
            return -minimum
        started = self.started_at or now
        may_stop = (now - started).total_seconds() >= asset.min_up_min * 60.0
        if target >= 0 and not may_stop:
            target = -minimum
        goal = -minimum if target >= 0 else target
        output = self._lagged(goal, dt_s)
        if asset.ramp_kw_per_min is not None:
            step = asset.ramp_kw_per_min / 60.0 * dt_s
            output = _clamp(output, self.power_kw - step, self.power_kw + step)
        output = _clamp(output, -asset.max_kw, -minimum)
        if target >= 0 and output >= -minimum - 1e-6:
            self.running = False
            self.started_at = None
            return 0.0
        return output


# --- factory and adapter ----------------------------------------------------------------------

MODEL_CLASSES: dict[AssetKind, type[SimModel]] = {
    AssetKind.BATTERY: BatteryModel,
    AssetKind.PV: PvModel,
    AssetKind.CURTAILABLE_LOAD: CurtailableLoadModel,
    AssetKind.SHIFTABLE_LOAD: ShiftableLoadModel,
    AssetKind.THERMAL_LOAD: ThermalLoadModel,
    AssetKind.EV_CHARGING: EvDepotModel,
    AssetKind.GENERATOR: GeneratorModel,
}


def _simulated_assets(park: Park) -> list[tuple[Enterprise, AnyAsset]]:
    """The park's assets that `Enterprise.route` reaches over a simulated connection.

    An asset behind a simulated gateway is handed on with the gateway's connection as its
    own, so that its model takes the gateway's telemetry period, lag and faults.
    """
    simulated: list[tuple[Enterprise, AnyAsset]] = []
    for enterprise, asset in park.iter_assets():
        connection = enterprise.route(asset).connection
        if not isinstance(connection, SimConnection):
            continue
        if asset.connection is connection:
            simulated.append((enterprise, asset))
        else:
            simulated.append((enterprise, asset.model_copy(update={"connection": connection})))
    return simulated


def make_model(asset: AnyAsset, site: Site, options: SimOptions | None = None) -> SimModel:
    """The model of an asset's kind."""
    return MODEL_CLASSES[asset.kind](asset, site, options)


@dataclass(frozen=True, slots=True)
class SimStats:
    """How the simulator keeps up: ticks, model steps, time spent, how late it ran."""

    ticks: int
    steps: int
    busy_s: float
    late_ticks: int
    max_lateness_s: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.busy_s if self.busy_s > 0 else 0.0


class SimAdapter(Adapter):
    """Runs simulated assets on a clock and speaks the Adapter interface for them."""

    def __init__(
        self,
        assets: Iterable[tuple[Enterprise, AnyAsset]],
        park: Park,
        clock: Clock,
        *,
        seed: int = 0,
        name: str = "sim",
        cloudiness: float = DEFAULT_CLOUDINESS,
        dropout_mean_s: float = DEFAULT_DROPOUT_MEAN_S,
    ) -> None:
        options = SimOptions(seed=seed, cloudiness=cloudiness, dropout_mean_s=dropout_mean_s)
        self.name = name
        self.clock = clock
        self.site = Site.of(park)
        self.models: dict[str, SimModel] = {}
        self.enterprise_of: dict[str, str] = {}
        for enterprise, asset in assets:
            self.models[asset.id] = make_model(asset, self.site, options)
            self.enterprise_of[asset.id] = enterprise.id
        self._asset_ids = frozenset(self.models)
        self._groups = self._chunked_groups()
        self._state = ConnectionState.DISCONNECTED
        self._last_tick_at: datetime | None = None
        self._ticks = 0
        self._steps = 0
        self._busy_s = 0.0
        self._late_ticks = 0
        self._max_lateness_s = 0.0

    @classmethod
    def from_park(
        cls,
        park: Park,
        clock: Clock,
        seed: int = 0,
        *,
        name: str = "sim",
        cloudiness: float = DEFAULT_CLOUDINESS,
        dropout_mean_s: float = DEFAULT_DROPOUT_MEAN_S,
    ) -> SimAdapter:
        """Every asset of the park whose connection is simulated, its own or its gateway's."""
        return cls(
            _simulated_assets(park),
            park,
            clock,
            seed=seed,
            name=name,
            cloudiness=cloudiness,
            dropout_mean_s=dropout_mean_s,
        )

    def _chunked_groups(self) -> dict[float, list[tuple[type[SimModel], list[SimModel]]]]:
        by_period: dict[float, dict[type[SimModel], list[SimModel]]] = {}
        for model in self.models.values():
            classes = by_period.setdefault(model.telemetry_period_s, {})
            classes.setdefault(type(model), []).append(model)
        groups: dict[float, list[tuple[type[SimModel], list[SimModel]]]] = {}
        for period, classes in sorted(by_period.items()):
            chunks: list[tuple[type[SimModel], list[SimModel]]] = []
            for model_class, models in classes.items():
                for start in range(0, len(models), CHUNK_SIZE):
                    chunks.append((model_class, models[start : start + CHUNK_SIZE]))
            groups[period] = chunks
        return groups

    # --- Adapter ----------------------------------------------------------------------------

    @property
    def asset_ids(self) -> frozenset[str]:
        return self._asset_ids

    async def run(self, sink: TelemetrySink) -> None:
        """Step every model once per its telemetry period (clock time) and deliver readings."""
        self._state = ConnectionState.CONNECTED
        start = self.clock.now()
        last = dict.fromkeys(self._groups, start)
        due = dict.fromkeys(self._groups, start)
        first = dict.fromkeys(self._groups, True)
        try:
            while True:
                next_due = min(due.values())
                wait = (next_due - self.clock.now()).total_seconds()
                if wait > 0:
                    await self.clock.sleep(wait)
                now = self.clock.now()
                for period, chunks in self._groups.items():
                    if due[period] > now:
                        continue
                    lateness = (now - due[period]).total_seconds()
                    dt_s = period if first[period] else (now - last[period]).total_seconds()
                    first[period] = False
                    await self._tick(chunks, now, dt_s, sink)
                    last[period] = now
                    due[period] += timedelta(seconds=period)
                    if due[period] <= now:  # fell a whole period behind: skip, do not burst
                        self._late_ticks += 1
                        if self._late_ticks == 1 or self._late_ticks % 100 == 0:
                            log.warning(
                                "%s: %d ticks fell a period behind (%.1f s late); "
                                "too many assets for this clock speed",
                                self.name,
                                self._late_ticks,
                                lateness,
                            )
                        due[period] = now + timedelta(seconds=period)
                    self._max_lateness_s = max(self._max_lateness_s, lateness)
        finally:
            self._state = ConnectionState.DISCONNECTED

    async def _tick(
        self,
        chunks: list[tuple[type[SimModel], list[SimModel]]],
        now: datetime,
        dt_s: float,
        sink: TelemetrySink,
    ) -> None:
        self._ticks += 1
        since_yield = 0
        for model_class, models in chunks:
            began = time.perf_counter()
            model_class.step_all(models, now, dt_s)
            batch = [m.measure(now) for m in models if not m.is_silent(now)]
            self._busy_s += time.perf_counter() - began
            self._steps += len(models)
            if batch:
                sink.accept(self.name, batch)
                self._last_tick_at = now
            since_yield += len(models)
            if since_yield >= CHUNK_SIZE:  # let the control loop and the API run
                since_yield = 0
                await asyncio.sleep(0)

    def step_once(self, now: datetime, dt_s: float) -> list[Measurement]:
        """Step every model once, synchronously, and return the readings (for benchmarks)."""
        readings: list[Measurement] = []
        began = time.perf_counter()
        for chunks in self._groups.values():
            for model_class, models in chunks:
                model_class.step_all(models, now, dt_s)
                readings.extend(m.measure(now) for m in models if not m.is_silent(now))
                self._steps += len(models)
        self._busy_s += time.perf_counter() - began
        self._ticks += 1
        return readings

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        now = self.clock.now()
        model = self.models.get(setpoint.asset_id)
        if model is None:
            return SetpointAck(
                setpoint.correlation_id, setpoint.asset_id, False, now, None, "unknown_asset"
            )
        if setpoint.expired(now):
            return SetpointAck(
                setpoint.correlation_id, setpoint.asset_id, False, now, None, "expired"
            )
        if model.is_silent(now):
            return SetpointAck(
                setpoint.correlation_id, setpoint.asset_id, False, now, None, "timeout"
            )
        applied = model.apply(setpoint)
        await asyncio.sleep(0)
        return SetpointAck(setpoint.correlation_id, setpoint.asset_id, True, now, applied)

    def health(self) -> AdapterHealth:
        return AdapterHealth(
            name=self.name,
            state=self._state,
            last_message_at=self._last_tick_at,
        )

    # --- test and demo controls -------------------------------------------------------------

    def drop(self, asset_id: str) -> None:
        """Silence a device until `restore`: no telemetry, no acks; physics goes on."""
        self.models[asset_id].held_silent = True

    def restore(self, asset_id: str) -> None:
        model = self.models[asset_id]
        model.held_silent = False
        model.silent_until = None

    def stats(self) -> SimStats:
        return SimStats(
            ticks=self._ticks,
            steps=self._steps,
            busy_s=self._busy_s,
            late_ticks=self._late_ticks,
            max_lateness_s=self._max_lateness_s,
        )
