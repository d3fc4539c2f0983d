"""Market rule sets: everything a market differs in, as validated configuration.

A rule set file under `config/markets/` is either a spot energy market (`kind: spot`) or a
demand-response product (`kind: demand_response`). Code reads these values; it never hard-codes
a market's numbers.
"""

from __future__ import annotations

from datetime import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Price = Annotated[float, Field(ge=-100_000, le=100_000, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]

BaselineMethod = Literal["caiso_10_in_10", "pjm_high_4_of_5", "avg_5_working_days", "high_5_of_10"]


class RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class GateClosure(RuleModel):
    """When day-ahead bids for a delivery day must be in: `days_before` at local `at`."""

    days_before: int = Field(default=1, ge=0, le=7)
    at: time = time(9, 30)


class SettlementRules(RuleModel):
    """How delivered flexibility turns into money.

    Performance ratio = delivered / awarded. Up to `credited_cap_ratio` it is paid in full;
    beyond it, `excess_credit_share` of the excess is paid; below `penalty_floor_ratio` the
    shortfall to that floor is charged at `penalty_price_multiple` × the price.
    """

    credited_cap_ratio: Ratio = 1.1
    excess_credit_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    no_payment_below_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    penalty_floor_ratio: Annotated[float, Field(ge=0, le=1)] = 0.9
    penalty_price_multiple: Ratio = 1.0

    @model_validator(mode="after")
    def _order(self) -> SettlementRules:
        if self.credited_cap_ratio < 1:
            raise ValueError("credited_cap_ratio must be at least 1")
        if self.no_payment_below_ratio > self.penalty_floor_ratio:
            raise ValueError("no_payment_below_ratio must not exceed penalty_floor_ratio")
        return self


class _RuleSet(RuleModel):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str
    region: str = ""
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    timezone: str = "Asia/Shanghai"
    interval_min: Literal[5, 15, 30, 60] = 15
    baseline: BaselineMethod = "avg_5_working_days"
    settlement: SettlementRules = Field(default_factory=SettlementRules)

    @property
    def intervals_per_day(self) -> int:
        return 24 * 60 // self.interval_min


class SpotMarketRules(_RuleSet):
    """An energy market with price-quantity bids per interval, cleared at a uniform price."""

    kind: Literal["spot"]
    price_floor_per_mwh: Price
    price_cap_per_mwh: Price
    max_bid_segments: int = Field(default=10, ge=1, le=100)
    min_aggregated_capacity_kw: Annotated[float, Field(ge=0, le=10_000_000)] = 0.0
    min_segment_kw: Annotated[float, Field(ge=0, le=1_000_000)] = 0.0
    gate_closure: GateClosure = Field(default_factory=GateClosure)
    single_node: bool = True
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
    """One way the grid calls the product: how early it notifies and how long events last."""

    kind: Literal["day_ahead", "intraday", "emergency"]
    notice_min: Annotated[float, Field(ge=0, le=7 * 24 * 60)]
    compensation_multiple: Ratio = 1.0


class DemandResponseRules(_RuleSet):
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
        return self


RuleSet = Annotated[SpotMarketRules | DemandResponseRules, Field(discriminator="kind")]
AnyRuleSet = SpotMarketRules | DemandResponseRules
