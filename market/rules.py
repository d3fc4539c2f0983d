"""Market rule sets: everything a market differs in, as validated configuration.

A rule set file under `config/markets/` is either a spot energy market (`kind: spot`) or a
demand-response product (`kind: demand_response`). Code reads these values; it never hard-codes
a market's numbers: interval length, gate closure, price bounds, bid shape limits, the working
day calendar, the baseline method and the settlement terms all live here.
"""

from __future__ import annotations

import zoneinfo
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Price = Annotated[float, Field(ge=-100_000, le=100_000, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]

BaselineMethod = Literal["caiso_10_in_10", "pjm_high_4_of_5", "avg_5_working_days", "high_5_of_10"]
Adjustment = Literal["none", "multiplicative", "additive"]
InvitationKind = Literal["day_ahead", "intraday", "emergency"]


class RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class GateClosure(RuleModel):
    """When day-ahead bids for a delivery day must be in: `days_before` at local `at`."""

    days_before: int = Field(default=1, ge=0, le=7)
    at: time = time(9, 30)

    def closes_at(self, delivery_day: date, tz: zoneinfo.ZoneInfo) -> datetime:
        """The moment (timezone-aware, in `tz`) after which bids for `delivery_day` are refused."""
        day = delivery_day - timedelta(days=self.days_before)
        return datetime.combine(day, self.at, tzinfo=tz)


class Calendar(RuleModel):
    """Which days are normal working days: Monday to Friday, less holidays, plus make-up days.

    Chinese public holidays move working days onto weekends (调休); those weekend days are
    listed in `working_weekends` and count as working days for baselines.
    """

    holidays: list[date] = Field(default_factory=list, max_length=2000)
    working_weekends: list[date] = Field(default_factory=list, max_length=2000)

    @model_validator(mode="after")
    def _disjoint(self) -> Calendar:
        both = sorted(set(self.holidays) & set(self.working_weekends))
        if both:
            raise ValueError(f"{both[0].isoformat()} is listed both as holiday and as working day")
        weekday = [d for d in self.working_weekends if d.weekday() < 5]
        if weekday:
            raise ValueError(f"working_weekends: {weekday[0].isoformat()} is not a weekend day")
        return self

    def is_holiday(self, day: date) -> bool:
        return day in self.holidays

    def is_working_day(self, day: date) -> bool:
        if day in self.holidays:
            return False
        return day.weekday() < 5 or day in self.working_weekends


# How each method picks its days when the file names only the method: (pool of most recent
# eligible days, how many of them are kept, by highest load over the event window).
BASELINE_POOLS: dict[str, tuple[int, int]] = {
    "caiso_10_in_10": (10, 10),
    "pjm_high_4_of_5": (5, 4),
    "avg_5_working_days": (5, 5),
    "high_5_of_10": (10, 5),
}
_DEFAULT_ADJUSTMENT: dict[str, Adjustment] = {
    "caiso_10_in_10": "multiplicative",
    "pjm_high_4_of_5": "none",
    "avg_5_working_days": "none",
    "high_5_of_10": "none",
}


class BaselineRules(RuleModel):
    """How a customer baseline is built from meter history.

    `method` fixes the day pool (see BASELINE_POOLS). A same-day adjustment scales
    (multiplicative) or shifts (additive) the baseline so that it meets the metered load over
    `adjustment_window_hours` ending `adjustment_gap_hours` before the event starts; the change is
    capped at `adjustment_cap_ratio` of the unadjusted baseline (0.2 = ±20 %). Written as a plain
    string, the method's usual adjustment applies (CAISO 10-in-10: multiplicative, ±20 %).
    """

    method: BaselineMethod
    adjustment: Adjustment = "none"
    adjustment_cap_ratio: Annotated[float, Field(ge=0, le=10)] | None = 0.2
    adjustment_window_hours: Annotated[float, Field(gt=0, le=12)] = 3.0
    adjustment_gap_hours: Annotated[float, Field(ge=0, le=12)] = 1.0
    max_lookback_days: int = Field(default=45, ge=1, le=366)
    min_days: int | None = Field(default=None, ge=1, le=30)

    @model_validator(mode="before")
    @classmethod
    def _from_method_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"method": value, "adjustment": _DEFAULT_ADJUSTMENT.get(value, "none")}
        return value

    @model_validator(mode="after")
    def _pool(self) -> BaselineRules:
        pool, _ = BASELINE_POOLS[self.method]
        if self.min_days is not None and self.min_days > pool:
            raise ValueError(f"min_days {self.min_days} exceeds the {pool} days {self.method} uses")
        return self

    @property
    def pool_days(self) -> int:
        return BASELINE_POOLS[self.method][0]

    @property
    def keep_days(self) -> int:
        return BASELINE_POOLS[self.method][1]

    @property
    def required_days(self) -> int:
        """Fewest eligible days the baseline can be built from (default: the full pool)."""
        return self.min_days if self.min_days is not None else self.pool_days


class SettlementRules(RuleModel):
    """How delivered flexibility turns into money.

    Performance ratio = delivered / awarded. Up to `credited_cap_ratio` it is paid in full;
    beyond it, `excess_credit_share` of the excess is paid; below `no_payment_below_ratio`
    nothing is paid; below `penalty_floor_ratio` the shortfall to that floor is charged at
    `penalty_price_multiple` × the price. `evaluation` says whether the ratio is taken over the
    whole event or interval by interval.
    """

    credited_cap_ratio: Ratio = 1.1
    excess_credit_share: Share = 0.5
    no_payment_below_ratio: Share = 0.0
    penalty_floor_ratio: Share = 0.9
    penalty_price_multiple: Ratio = 1.0
    evaluation: Literal["event", "interval"] = "event"

    @model_validator(mode="after")
    def _order(self) -> SettlementRules:
        if self.credited_cap_ratio < 1:
            raise ValueError("credited_cap_ratio must be at least 1")
        if self.no_payment_below_ratio > self.penalty_floor_ratio:
            raise ValueError("no_payment_below_ratio must not exceed penalty_floor_ratio")
        return self


class RuleSetBase(RuleModel):
    """What every rule set has: identity, currency, time grid, calendar, baseline, settlement."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str
    region: str = ""
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    timezone: str = "Asia/Shanghai"
    interval_min: Literal[5, 15, 30, 60] = 15
    gate_closure: GateClosure = Field(default_factory=GateClosure)
    calendar: Calendar = Field(default_factory=Calendar)
    baseline: BaselineRules = Field(
        default_factory=lambda: BaselineRules(method="avg_5_working_days")
    )
    settlement: SettlementRules = Field(default_factory=SettlementRules)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown timezone {value!r}") from err
        return value

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def interval(self) -> timedelta:
        return timedelta(minutes=self.interval_min)

    @property
    def intervals_per_day(self) -> int:
        return 24 * 60 // self.interval_min


class SpotMarketRules(RuleSetBase):
    """An energy market with price-quantity bids per interval, cleared at a uniform price.

    `require_full_day`: a day-ahead submission covers every interval of each delivery day it
    touches (96 points at 15 minutes). `min_aggregated_capacity_kw` is the smallest flexible range
    (power at the floor price minus power at the cap) a price-responsive curve may offer.
    """

    kind: Literal["spot"]
    price_floor_per_mwh: Price
    price_cap_per_mwh: Price
    max_bid_segments: int = Field(default=10, ge=1, le=100)
    min_aggregated_capacity_kw: Annotated[float, Field(ge=0, le=10_000_000)] = 0.0
    min_segment_kw: Annotated[float, Field(ge=0, le=1_000_000)] = 0.0
    require_full_day: bool = True
    single_node: bool = True
    clearing_node: str = ""
    economic_dr: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> SpotMarketRules:
        if self.price_floor_per_mwh >= self.price_cap_per_mwh:
            raise ValueError(
                f"price_floor_per_mwh {self.price_floor_per_mwh} must be below "
                f"price_cap_per_mwh {self.price_cap_per_mwh}"
            )
        return self


class DrInvitation(RuleModel):
    """One way the grid calls the product: how early it notifies and how it pays."""

    kind: InvitationKind
    notice_min: Annotated[float, Field(ge=0, le=7 * 24 * 60)]
    compensation_multiple: Ratio = 1.0


class DemandResponseRules(RuleSetBase):
    """A demand-response product: capacity offers (kW and price) answered by events."""

    kind: Literal["demand_response"]
    direction: Literal["reduction", "increase", "both"] = "reduction"
    bid_price_cap_per_mwh: Annotated[float, Field(gt=0, le=100_000)]
    min_response_kw: Annotated[float, Field(ge=0, le=10_000_000)] = 0.0
    min_duration_min: Annotated[float, Field(gt=0, le=24 * 60)] = 60.0
    max_duration_min: Annotated[float, Field(gt=0, le=24 * 60)] = 240.0
    invitations: list[DrInvitation] = Field(min_length=1)
    max_events_per_day: int | None = Field(default=None, ge=1, le=96)
    capacity_payment_per_kw_month: Annotated[float, Field(ge=0, le=10_000)] = 0.0

    @model_validator(mode="after")
    def _durations(self) -> DemandResponseRules:
        if self.min_duration_min > self.max_duration_min:
            raise ValueError("min_duration_min must not exceed max_duration_min")
        kinds = [i.kind for i in self.invitations]
        if len(set(kinds)) != len(kinds):
            raise ValueError("each invitation kind may be listed once")
        return self

    def invitation(self, kind: str) -> DrInvitation | None:
        """The invitation terms of `kind`, or None when the product has no such call."""
        return next((i for i in self.invitations if i.kind == kind), None)


RuleSet = Annotated[SpotMarketRules | DemandResponseRules, Field(discriminator="kind")]
AnyRuleSet = SpotMarketRules | DemandResponseRules
