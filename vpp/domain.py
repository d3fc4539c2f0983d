"""Domain types shared by every layer: plain frozen dataclasses with units in their field names.

Sign convention: positive power is drawn from the grid (consumption), negative is injected.
This module imports nothing of the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class AssetKind(StrEnum):
    """The kinds of flexible asset the engine knows how to model and control."""

    BATTERY = "battery"
    PV = "pv"
    CURTAILABLE_LOAD = "curtailable_load"
    SHIFTABLE_LOAD = "shiftable_load"
    THERMAL_LOAD = "thermal_load"
    EV_CHARGING = "ev_charging"
    GENERATOR = "generator"


class Availability(StrEnum):
    """What the fleet knows about an asset right now."""

    UNKNOWN = "unknown"  # enrolled, never heard from
    AVAILABLE = "available"  # fresh telemetry, reports itself available
    STALE = "stale"  # last telemetry older than the staleness limit
    OFFLINE = "offline"  # reported unavailable (status message, last will, device flag)
    DEGRADED = "degraded"  # online but not following setpoints


class FallbackMode(StrEnum):
    """What an asset is driven to when its telemetry goes stale."""

    HOLD = "hold"  # keep re-sending the last setpoint, up to a maximum hold time
    RELEASE = "release"  # hand back to local control (no engine setpoint)
    SAFE = "safe"  # send the asset's configured safe value


@dataclass(frozen=True, slots=True)
class Interval:
    """A market or schedule interval: start (timezone-aware) and length."""

    start: datetime
    length: timedelta

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("Interval.start must be timezone-aware")
        if self.length <= timedelta(0):
            raise ValueError("Interval.length must be positive")

    @property
    def end(self) -> datetime:
        return self.start + self.length

    @property
    def hours(self) -> float:
        return self.length.total_seconds() / 3600.0

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """Inclusive power range an asset can be asked for right now, in kW (min_kw <= max_kw)."""

    min_kw: float
    max_kw: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_kw) and math.isfinite(self.max_kw)):
            raise ValueError("PowerLimits must be finite")
        if self.min_kw > self.max_kw:
            raise ValueError(f"PowerLimits min_kw {self.min_kw} > max_kw {self.max_kw}")

    def clamp(self, power_kw: float) -> float:
        """The nearest power within the limits; NaN maps to the bound closest to zero."""
        if math.isnan(power_kw):
            return min(max(0.0, self.min_kw), self.max_kw)
        return min(max(power_kw, self.min_kw), self.max_kw)

    def contains(self, power_kw: float, tolerance_kw: float = 1e-9) -> bool:
        return self.min_kw - tolerance_kw <= power_kw <= self.max_kw + tolerance_kw

    def intersect(self, other: PowerLimits) -> PowerLimits:
        low = max(self.min_kw, other.min_kw)
        high = min(self.max_kw, other.max_kw)
        if low > high:  # disjoint: keep the point of self closest to other
            point = self.clamp(other.clamp(0.0))
            return PowerLimits(point, point)
        return PowerLimits(low, high)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One telemetry reading of one asset."""

    asset_id: str
    timestamp: datetime
    power_kw: float
    soc_fraction: float | None = None  # batteries, EV fleets: state of charge in [0, 1]
    temperature_c: float | None = None  # thermal loads: controlled temperature
    energy_kwh: float | None = None  # cumulative meter reading, when the device has one
    available: bool = True


@dataclass(frozen=True, slots=True)
class Setpoint:
    """A power command for one asset, valid until `valid_until` and never sent after it."""

    asset_id: str
    power_kw: float
    issued_at: datetime
    valid_until: datetime
    correlation_id: str

    def expired(self, now: datetime) -> bool:
        return now >= self.valid_until


@dataclass(frozen=True, slots=True)
class SetpointAck:
    """A device's answer to a setpoint: whether it was applied and at what power."""

    correlation_id: str
    asset_id: str
    accepted: bool
    at: datetime
    applied_power_kw: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AssetState:
    """The fleet's view of one asset: last measurement, availability and when it was seen."""

    asset_id: str
    enterprise_id: str
    kind: AssetKind
    availability: Availability
    last: Measurement | None


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Sum over a set of assets (an enterprise or the park) from their latest fresh telemetry."""

    power_kw: float
    assets: int
    available: int
    stale: int
    offline: int
    unknown: int
    degraded: int
    by_kind_kw: dict[AssetKind, float]


@dataclass(frozen=True, slots=True)
class BidStep:
    """One step of a bid curve: at clearing prices up to `price_up_to_per_mwh`, draw `power_kw`."""

    price_up_to_per_mwh: float
    power_kw: float


@dataclass(frozen=True, slots=True)
class BidCurve:
    """Net park power (positive = drawn) offered for one interval as a function of price.

    A non-increasing step function: steps are ordered by ascending price and their power does
    not increase. At a clearing price p the quantity is the power of the first step whose
    `price_up_to_per_mwh` >= p, and the last step's power above every step's price.
    """

    interval: Interval
    steps: tuple[BidStep, ...]

    def power_at(self, price_per_mwh: float) -> float:
        for step in self.steps:
            if price_per_mwh <= step.price_up_to_per_mwh:
                return step.power_kw
        return self.steps[-1].power_kw


@dataclass(frozen=True, slots=True)
class DrOffer:
    """A demand-response capacity offer: reduce consumption by `reduction_kw` for a price."""

    interval: Interval
    reduction_kw: float
    price_per_mwh: float


@dataclass(frozen=True, slots=True)
class Award:
    """What the market cleared for one interval: the park's committed net power and price."""

    interval: Interval
    power_kw: float
    price_per_mwh: float
    market: str


@dataclass(frozen=True, slots=True)
class DrEvent:
    """A demand-response call: reduce (or, negative, increase) park power over [start, end)."""

    event_id: str
    product: str
    start: datetime
    end: datetime
    notified_at: datetime
    reduction_kw: float
    price_per_mwh: float
    invitation: str = "day_ahead"  # day_ahead, intraday or emergency
    opted_in: bool = True

    def active(self, moment: datetime) -> bool:
        return self.opted_in and self.start <= moment < self.end
