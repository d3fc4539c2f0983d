"""Time axes and forecast containers that flow from forecasting into problem building.

Arrays are numpy float64, one value per interval of the horizon; power follows the project's
sign (positive = drawn from the grid).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Horizon:
    """`intervals` consecutive intervals of length `interval` from `start` (timezone-aware)."""

    start: datetime
    interval: timedelta
    intervals: int

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("Horizon.start must be timezone-aware")
        if self.interval <= timedelta(0) or self.intervals <= 0:
            raise ValueError("Horizon needs a positive interval length and count")

    @property
    def hours(self) -> float:
        """Length of one interval in hours."""
        return self.interval.total_seconds() / 3600.0

    @property
    def end(self) -> datetime:
        return self.start + self.interval * self.intervals

    def starts(self) -> list[datetime]:
        return [self.start + self.interval * k for k in range(self.intervals)]

    def index_of(self, moment: datetime) -> int:
        """Index of the interval holding `moment` (may be out of range)."""
        return int((moment - self.start) // self.interval)


@dataclass(frozen=True, slots=True)
class AssetForecast:
    """Expected uncontrolled power of one asset per interval, with quantile bands.

    Meaning by kind: loads (curtailable, thermal, EV) — consumption without intervention;
    PV — available generation (negative); others — zeros.
    """

    asset_id: str
    power_kw: FloatArray
    quantiles_kw: Mapping[float, FloatArray] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvSessionForecast:
    """A (forecast or booked) EV charging session on the horizon's interval grid.

    The vehicle is plugged in over intervals [arrival_index, departure_index) and needs
    `energy_kwh` by departure, drawing at most `max_power_kw`.
    """

    arrival_index: int
    departure_index: int
    energy_kwh: float
    max_power_kw: float


@dataclass(frozen=True, slots=True)
class ParkForecast:
    """Everything forecast for a horizon: per-asset power and EV sessions per depot."""

    horizon: Horizon
    assets: Mapping[str, AssetForecast]
    ev_sessions: Mapping[str, tuple[EvSessionForecast, ...]] = field(default_factory=dict)
    ambient_c: FloatArray | None = None
