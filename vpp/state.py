"""The engine's read model: the latest results of every loop, as the API and dashboard serve them.

The engine and its loops publish into one `EngineState` (on the event loop); the API only
reads it. Each view is a frozen dataclass in the project's units, independent of the optimiser's
and the market's internal types, so those can change without changing the API.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from vpp.carbon import CarbonAccount, TrendPoint
from vpp.config.schema import Park
from vpp.domain import Award, BidCurve, DrEvent, DrOffer
from vpp.errors import VPPError

CONTROL_HISTORY = 2000  # cycles kept for the live chart (about an hour at 2 s)


class StateError(VPPError):
    """A requested change does not fit the current state; `status` says how the API answers."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None:
        raise StateError(422, f"{what} must be timezone-aware")


def _series(values: Iterable[float], what: str) -> tuple[float, ...]:
    result = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in result):
        raise StateError(422, f"{what} has NaN or infinite values")
    return result


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """The schedule in force: park and per-asset planned power (kW) per interval."""

    computed_at: datetime
    start: datetime
    interval_min: int
    status: str  # the solve's status, or the fallback that replaced it
    park_kw: tuple[float, ...]
    asset_kw: Mapping[str, tuple[float, ...]]
    objective: float | None = None
    carbon_price_per_t: float | None = None

    def interval_starts(self) -> list[datetime]:
        step = timedelta(minutes=self.interval_min)
        return [self.start + step * k for k in range(len(self.park_kw))]


@dataclass(frozen=True, slots=True)
class EnvelopeView:
    """The park's flexibility per interval: expected power and the reachable range (kW)."""

    computed_at: datetime
    start: datetime
    interval_min: int
    expected_kw: tuple[float, ...]
    min_kw: tuple[float, ...]
    max_kw: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class PriceView:
    """Prices per interval (currency/MWh): a forecast before clearing, the cleared ones after."""

    start: datetime
    interval_min: int
    price_per_mwh: tuple[float, ...]
    kind: str  # "forecast" or "cleared"
    currency: str


@dataclass(frozen=True, slots=True)
class BidsView:
    """The bids submitted for a delivery day: price-quantity curves and DR capacity offers."""

    computed_at: datetime
    curves: tuple[BidCurve, ...]
    dr_offers: tuple[DrOffer, ...] = ()


class DrStatus(StrEnum):
    """Where a demand-response event stands for the park."""

    NOTIFIED = "notified"
    ACKNOWLEDGED = "acknowledged"
    OPTED_OUT = "opted_out"


@dataclass(frozen=True, slots=True)
class DrEventView:
    """A DR event with what the operator did about it."""

    event: DrEvent
    status: DrStatus = DrStatus.NOTIFIED
    changed_at: datetime | None = None
    changed_by: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class SettlementLine:
    """Settlement of one enterprise for one event or interval: energy and money."""

    enterprise_id: str
    reference: str  # DR event id or market interval it settles
    start: datetime
    end: datetime
    baseline_kwh: float
    metered_kwh: float
    delivered_kwh: float  # baseline - metered for a reduction
    committed_kwh: float
    revenue: float
    penalty: float
    currency: str

    @property
    def performance_ratio(self) -> float | None:
        if abs(self.committed_kwh) < 1e-9:
            return None
        return self.delivered_kwh / self.committed_kwh


@dataclass(frozen=True, slots=True)
class ControlCycleView:
    """What one control cycle did: the target, the measurement and the setpoints it sent."""

    at: datetime
    target_kw: float | None
    measured_kw: float
    setpoints_sent: int
    setpoints_clamped: int
    duration_s: float
    degraded_assets: tuple[str, ...] = ()

    @property
    def error_kw(self) -> float | None:
        return None if self.target_kw is None else self.target_kw - self.measured_kw


@dataclass(frozen=True, slots=True)
class CarbonView:
    """The latest carbon accounting with its daily trend."""

    computed_at: datetime
    account: CarbonAccount
    trend: tuple[TrendPoint, ...]


@dataclass(frozen=True, slots=True)
class PowerSample:
    at: datetime
    measured_kw: float
    target_kw: float | None


@dataclass(slots=True)
class EngineState:
    """Latest results of every loop. Written by the engine on its event loop, read by the API."""

    park: Park
    config_path: str = ""
    schedule: ScheduleView | None = None
    envelope: EnvelopeView | None = None
    prices: PriceView | None = None
    bids: BidsView | None = None
    awards: dict[tuple[str, datetime], Award] = field(default_factory=dict)
    dr_events: dict[str, DrEventView] = field(default_factory=dict)
    settlements: list[SettlementLine] = field(default_factory=list)
    carbon: CarbonView | None = None
    control: ControlCycleView | None = None
    power_history: deque[PowerSample] = field(default_factory=lambda: deque(maxlen=CONTROL_HISTORY))
    replans: int = 0

    # --- publishing ------------------------------------------------------------------------

    def publish_park(self, park: Park, config_path: str = "") -> None:
        """A (re)loaded enrollment: results for assets no longer enrolled are dropped."""
        self.park = park
        if config_path:
            self.config_path = config_path
        if self.schedule is not None:
            known = {asset.id for _, asset in park.iter_assets()}
            kept = {k: v for k, v in self.schedule.asset_kw.items() if k in known}
            self.schedule = replace(self.schedule, asset_kw=kept)

    def publish_schedule(
        self,
        *,
        computed_at: datetime,
        start: datetime,
        interval_min: int,
        status: str,
        asset_kw: Mapping[str, Sequence[float]],
        park_kw: Sequence[float] | None = None,
        objective: float | None = None,
        carbon_price_per_t: float | None = None,
    ) -> ScheduleView:
        """A new schedule; the park series defaults to the sum over assets."""
        _aware(start, "schedule start")
        _aware(computed_at, "computed_at")
        assets = {key: _series(values, f"schedule of {key}") for key, values in asset_kw.items()}
        lengths = {len(v) for v in assets.values()}
        if park_kw is None:
            if len(lengths) > 1:
                raise StateError(422, "schedule series have different lengths")
            count = lengths.pop() if lengths else 0
            park = tuple(sum(v[k] for v in assets.values()) for k in range(count))
        else:
            park = _series(park_kw, "park schedule")
            if lengths - {len(park)}:
                raise StateError(422, "asset schedules and the park schedule differ in length")
        self.schedule = ScheduleView(
            computed_at=computed_at,
            start=start,
            interval_min=interval_min,
            status=status,
            park_kw=park,
            asset_kw=assets,
            objective=objective,
            carbon_price_per_t=carbon_price_per_t,
        )
        return self.schedule

    def publish_envelope(
        self,
        *,
        computed_at: datetime,
        start: datetime,
        interval_min: int,
        expected_kw: Sequence[float],
        min_kw: Sequence[float],
        max_kw: Sequence[float],
    ) -> EnvelopeView:
        _aware(start, "envelope start")
        expected = _series(expected_kw, "envelope expected_kw")
        low = _series(min_kw, "envelope min_kw")
        high = _series(max_kw, "envelope max_kw")
        if not len(expected) == len(low) == len(high):
            raise StateError(422, "envelope series differ in length")
        if any(lo > hi + 1e-6 for lo, hi in zip(low, high, strict=True)):
            raise StateError(422, "envelope min_kw exceeds max_kw")
        self.envelope = EnvelopeView(computed_at, start, interval_min, expected, low, high)
        return self.envelope

    def publish_prices(
        self,
        *,
        start: datetime,
        interval_min: int,
        price_per_mwh: Sequence[float],
        kind: str,
        currency: str,
    ) -> PriceView:
        _aware(start, "price start")
        self.prices = PriceView(
            start, interval_min, _series(price_per_mwh, "prices"), kind, currency
        )
        return self.prices

    def publish_bids(
        self,
        computed_at: datetime,
        curves: Sequence[BidCurve],
        dr_offers: Sequence[DrOffer] = (),
    ) -> BidsView:
        self.bids = BidsView(computed_at, tuple(curves), tuple(dr_offers))
        return self.bids

    def publish_awards(self, awards: Iterable[Award]) -> None:
        """Add or replace awards; one per market and interval start."""
        for award in awards:
            self.awards[(award.market, award.interval.start)] = award

    def award_list(self) -> list[Award]:
        return sorted(self.awards.values(), key=lambda a: (a.interval.start, a.market))

    def publish_dr_event(self, event: DrEvent) -> DrEventView:
        """A new or updated event; an update keeps what the operator already did about it."""
        current = self.dr_events.get(event.event_id)
        view = DrEventView(event) if current is None else replace(current, event=event)
        self.dr_events[event.event_id] = view
        return view

    def acknowledge_dr_event(
        self, event_id: str, by: str, at: datetime, note: str = ""
    ) -> DrEventView:
        view = self._dr_event(event_id)
        if view.status is DrStatus.OPTED_OUT:
            raise StateError(409, f"DR event '{event_id}' was opted out; it cannot be acknowledged")
        if at >= view.event.end:
            raise StateError(409, f"DR event '{event_id}' is over")
        updated = replace(
            view, status=DrStatus.ACKNOWLEDGED, changed_at=at, changed_by=by, note=note
        )
        self.dr_events[event_id] = updated
        return updated

    def opt_out_dr_event(self, event_id: str, by: str, at: datetime, reason: str) -> DrEventView:
        view = self._dr_event(event_id)
        if view.status is DrStatus.OPTED_OUT:
            raise StateError(409, f"DR event '{event_id}' is already opted out")
        if at >= view.event.start:
            raise StateError(409, f"DR event '{event_id}' has started; opting out is too late")
        updated = replace(
            view,
            event=replace(view.event, opted_in=False),
            status=DrStatus.OPTED_OUT,
            changed_at=at,
            changed_by=by,
            note=reason,
        )
        self.dr_events[event_id] = updated
        return updated

    def dr_event_list(self) -> list[DrEventView]:
        return sorted(self.dr_events.values(), key=lambda v: (v.event.start, v.event.event_id))

    def publish_settlements(
        self, lines: Iterable[SettlementLine], *, replace_all: bool = False
    ) -> None:
        """Add settlement lines; a line for the same enterprise and reference replaces the old."""
        if replace_all:
            self.settlements = []
        index = {(s.enterprise_id, s.reference): i for i, s in enumerate(self.settlements)}
        for line in lines:
            key = (line.enterprise_id, line.reference)
            if key in index:
                self.settlements[index[key]] = line
            else:
                index[key] = len(self.settlements)
                self.settlements.append(line)

    def publish_carbon(
        self, computed_at: datetime, account: CarbonAccount, trend: Sequence[TrendPoint]
    ) -> CarbonView:
        self.carbon = CarbonView(computed_at, account, tuple(trend))
        return self.carbon

    def publish_control(self, cycle: ControlCycleView) -> None:
        self.control = cycle
        self.power_history.append(PowerSample(cycle.at, cycle.measured_kw, cycle.target_kw))

    @property
    def target_kw(self) -> float | None:
        """The park target the control loop followed in its last cycle (`TargetBook`: award or
        schedule, less active DR events, or an override); None before the first cycle or when
        nothing asks anything of the park. Read from the cycle, not worked out again here, so
        the API cannot show another target than the one the loop follows."""
        return None if self.control is None else self.control.target_kw

    # --- internals -------------------------------------------------------------------------

    def _dr_event(self, event_id: str) -> DrEventView:
        view = self.dr_events.get(event_id)
        if view is None:
            raise StateError(404, f"no DR event '{event_id}'")
        return view
