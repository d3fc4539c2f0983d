"""Check bid curves and demand-response offers against a market rule set before submission.

Every broken rule is a `BidError` naming the market, the rule and the interval at fault, so an
invalid bid is refused with a one-line reason before anything leaves the engine. The
`*_errors` functions list every problem; the `check_*` functions raise the first one.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from market.rules import DemandResponseRules, RuleSetBase, SpotMarketRules
from vpp.domain import BidCurve, DrOffer, Interval
from vpp.errors import VPPError


class BidRule(StrEnum):
    """The rules a submission can break; the value is the label shown in messages."""

    EMPTY = "empty"
    NOT_FINITE = "not_finite"
    SEGMENTS = "max_segments"
    PRICE_ORDER = "price_order"
    MONOTONE = "monotone"
    PRICE_FLOOR = "price_floor"
    PRICE_CAP = "price_cap"
    MIN_SEGMENT = "min_segment"
    MIN_CAPACITY = "min_capacity"
    INTERVAL_LENGTH = "interval_length"
    INTERVAL_ALIGNMENT = "interval_alignment"
    DUPLICATE = "duplicate_interval"
    FULL_DAY = "full_day"
    GATE_CLOSURE = "gate_closure"
    DIRECTION = "direction"
    MIN_RESPONSE = "min_response"
    MIN_DURATION = "min_duration"


class BidError(VPPError):
    """A bid curve or DR offer breaks a rule of its market; `rule` and `interval` say which."""

    def __init__(
        self, market: str, rule: BidRule, message: str, interval: Interval | None = None
    ) -> None:
        self.market = market
        self.rule = rule
        self.interval = interval
        self.detail = message
        where = f" interval {interval.start.isoformat()}" if interval is not None else ""
        super().__init__(f"{market}{where}: {rule.value}: {message}")


def spot_bid_errors(
    curves: Sequence[BidCurve], rules: SpotMarketRules, submitted_at: datetime
) -> list[BidError]:
    """Every rule of `rules` that `curves`, submitted at `submitted_at`, break (in order)."""
    _require_aware(submitted_at)
    errors: list[BidError] = []
    if not curves:
        errors.append(BidError(rules.id, BidRule.EMPTY, "the submission holds no bid curve"))
        return errors
    errors += _interval_errors([c.interval for c in curves], rules)
    for curve in curves:
        errors += _curve_errors(curve, rules)
    if rules.require_full_day:
        errors += _full_day_errors([c.interval for c in curves], rules)
    errors += _gate_errors([c.interval for c in curves], rules, submitted_at)
    return errors


def dr_offer_errors(
    offers: Sequence[DrOffer], rules: DemandResponseRules, submitted_at: datetime
) -> list[BidError]:
    """Every rule of `rules` that `offers`, submitted at `submitted_at`, break (in order)."""
    _require_aware(submitted_at)
    errors: list[BidError] = []
    if not offers:
        errors.append(BidError(rules.id, BidRule.EMPTY, "the submission holds no DR offer"))
        return errors
    errors += _interval_errors([o.interval for o in offers], rules)
    for offer in offers:
        errors += _offer_errors(offer, rules)
    errors += _duration_errors(offers, rules)
    errors += _gate_errors([o.interval for o in offers], rules, submitted_at)
    return errors


def check_spot_bids(
    curves: Sequence[BidCurve], rules: SpotMarketRules, submitted_at: datetime
) -> None:
    """Raise the first BidError of `spot_bid_errors`, if any."""
    errors = spot_bid_errors(curves, rules, submitted_at)
    if errors:
        raise errors[0]


def check_dr_offers(
    offers: Sequence[DrOffer], rules: DemandResponseRules, submitted_at: datetime
) -> None:
    """Raise the first BidError of `dr_offer_errors`, if any."""
    errors = dr_offer_errors(offers, rules, submitted_at)
    if errors:
        raise errors[0]


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("submitted_at must be timezone-aware")


def _curve_errors(curve: BidCurve, rules: SpotMarketRules) -> list[BidError]:
    market, interval, steps = rules.id, curve.interval, curve.steps
    if not steps:
        return [BidError(market, BidRule.EMPTY, "the curve has no step", interval)]
    values = [v for s in steps for v in (s.price_up_to_per_mwh, s.power_kw)]
    if not all(math.isfinite(v) for v in values):
        return [
            BidError(market, BidRule.NOT_FINITE, "a price or power is NaN or infinite", interval)
        ]
    errors: list[BidError] = []
    if len(steps) > rules.max_bid_segments:
        errors.append(
            BidError(
                market,
                BidRule.SEGMENTS,
                f"{len(steps)} segments, at most {rules.max_bid_segments} allowed",
                interval,
            )
        )
    for index, (low, high) in enumerate(itertools.pairwise(steps), start=1):
        if high.price_up_to_per_mwh <= low.price_up_to_per_mwh:
            errors.append(
                BidError(
                    market,
                    BidRule.PRICE_ORDER,
                    f"step {index} price {high.price_up_to_per_mwh} is not above step "
                    f"{index - 1} price {low.price_up_to_per_mwh}",
                    interval,
                )
            )
        if high.power_kw > low.power_kw:
            errors.append(
                BidError(
                    market,
                    BidRule.MONOTONE,
                    f"step {index} power {high.power_kw} kW rises above step {index - 1} power "
                    f"{low.power_kw} kW at a higher price",
                    interval,
                )
            )
        elif low.power_kw - high.power_kw < rules.min_segment_kw:
            errors.append(
                BidError(
                    market,
                    BidRule.MIN_SEGMENT,
                    f"step {index} moves {low.power_kw - high.power_kw:g} kW, less than the "
                    f"{rules.min_segment_kw:g} kW minimum segment",
                    interval,
                )
            )
    for index, step in enumerate(steps):
        if step.price_up_to_per_mwh < rules.price_floor_per_mwh:
            errors.append(
                BidError(
                    market,
                    BidRule.PRICE_FLOOR,
                    f"step {index} price {step.price_up_to_per_mwh} is below the floor "
                    f"{rules.price_floor_per_mwh} {rules.currency}/MWh",
                    interval,
                )
            )
        if step.price_up_to_per_mwh > rules.price_cap_per_mwh:
            errors.append(
                BidError(
                    market,
                    BidRule.PRICE_CAP,
                    f"step {index} price {step.price_up_to_per_mwh} is above the cap "
                    f"{rules.price_cap_per_mwh} {rules.currency}/MWh",
                    interval,
                )
            )
    # A one-step curve is a fixed schedule (price-taker); only a price-responsive curve must
    # offer the market's minimum flexible range.
    flexible_kw = steps[0].power_kw - steps[-1].power_kw
    if len(steps) > 1 and flexible_kw < rules.min_aggregated_capacity_kw:
        errors.append(
            BidError(
                market,
                BidRule.MIN_CAPACITY,
                f"the curve offers {flexible_kw:g} kW of flexibility, less than the "
                f"{rules.min_aggregated_capacity_kw:g} kW minimum aggregated capacity",
                interval,
            )
        )
    return errors


def _offer_errors(offer: DrOffer, rules: DemandResponseRules) -> list[BidError]:
    market, interval = rules.id, offer.interval
    if not (math.isfinite(offer.reduction_kw) and math.isfinite(offer.price_per_mwh)):
        return [
            BidError(market, BidRule.NOT_FINITE, "reduction or price is NaN or infinite", interval)
        ]
    errors: list[BidError] = []
    wrong_sign = (
        (rules.direction == "reduction" and offer.reduction_kw <= 0)
        or (rules.direction == "increase" and offer.reduction_kw >= 0)
        or offer.reduction_kw == 0
    )
    if wrong_sign:
        wanted = {"reduction": "positive", "increase": "negative", "both": "non-zero"}
        errors.append(
            BidError(
                market,
                BidRule.DIRECTION,
                f"reduction_kw {offer.reduction_kw:g} must be {wanted[rules.direction]} for a "
                f"{rules.direction} product",
                interval,
            )
        )
    elif abs(offer.reduction_kw) < rules.min_response_kw:
        errors.append(
            BidError(
                market,
                BidRule.MIN_RESPONSE,
                f"{abs(offer.reduction_kw):g} kW is below the {rules.min_response_kw:g} kW "
                "minimum response",
                interval,
            )
        )
    if offer.price_per_mwh < 0:
        errors.append(
            BidError(
                market,
                BidRule.PRICE_FLOOR,
                f"price {offer.price_per_mwh} {rules.currency}/MWh is negative",
                interval,
            )
        )
    if offer.price_per_mwh > rules.bid_price_cap_per_mwh:
        errors.append(
            BidError(
                market,
                BidRule.PRICE_CAP,
                f"price {offer.price_per_mwh} is above the bid cap "
                f"{rules.bid_price_cap_per_mwh} {rules.currency}/MWh",
                interval,
            )
        )
    return errors


def _duration_errors(offers: Sequence[DrOffer], rules: DemandResponseRules) -> list[BidError]:
    """Runs of back-to-back offers in one direction must last the product's minimum duration."""
    errors: list[BidError] = []
    # Zero or non-finite offers are refused on their own; they do not split or make a run.
    ordered = sorted(
        (o for o in offers if math.isfinite(o.reduction_kw) and o.reduction_kw != 0),
        key=lambda o: o.interval.start,
    )
    run: list[DrOffer] = []
    for offer in [*ordered, None]:
        if (
            offer is not None
            and run
            and run[-1].interval.end == offer.interval.start
            and (run[-1].reduction_kw > 0) == (offer.reduction_kw > 0)
        ):
            run.append(offer)
            continue
        if run:
            minutes = (run[-1].interval.end - run[0].interval.start) / timedelta(minutes=1)
            if minutes < rules.min_duration_min:
                errors.append(
                    BidError(
                        rules.id,
                        BidRule.MIN_DURATION,
                        f"offers run for {minutes:g} min, less than the "
                        f"{rules.min_duration_min:g} min minimum duration",
                        run[0].interval,
                    )
                )
        run = [offer] if offer is not None else []
    return errors


def _interval_errors(intervals: Iterable[Interval], rules: RuleSetBase) -> list[BidError]:
    errors: list[BidError] = []
    seen: set[datetime] = set()
    for interval in intervals:
        if interval.length != rules.interval:
            errors.append(
                BidError(
                    rules.id,
                    BidRule.INTERVAL_LENGTH,
                    f"interval lasts {interval.length / timedelta(minutes=1):g} min, the market "
                    f"uses {rules.interval_min} min",
                    interval,
                )
            )
        local = interval.start.astimezone(rules.tz)
        since_midnight = local - datetime.combine(local.date(), time.min, local.tzinfo)
        if since_midnight % rules.interval:
            errors.append(
                BidError(
                    rules.id,
                    BidRule.INTERVAL_ALIGNMENT,
                    f"interval does not start on the market's {rules.interval_min}-min grid "
                    f"({local.time().isoformat()} {rules.timezone})",
                    interval,
                )
            )
        if interval.start in seen:
            errors.append(
                BidError(rules.id, BidRule.DUPLICATE, "a second bid for this interval", interval)
            )
        seen.add(interval.start)
    return errors


def delivery_day(moment: datetime, rules: RuleSetBase) -> date:
    """The market day (local date in the rule set's timezone) that `moment` belongs to."""
    return moment.astimezone(rules.tz).date()


def day_intervals(day: date, rules: RuleSetBase) -> list[Interval]:
    """Every interval of the local market day `day` (92 or 100 on a 15-min DST change day)."""
    tz = rules.tz
    # Step in POSIX seconds so that a DST change day has its true number of intervals.
    moment = datetime.combine(day, time.min, tzinfo=tz).timestamp()
    stop = datetime.combine(day + timedelta(days=1), time.min, tzinfo=tz).timestamp()
    step = rules.interval.total_seconds()
    intervals = []
    while moment < stop:
        intervals.append(Interval(datetime.fromtimestamp(moment, tz=tz), rules.interval))
        moment += step
    return intervals


def _full_day_errors(intervals: Sequence[Interval], rules: SpotMarketRules) -> list[BidError]:
    by_day: dict[date, set[datetime]] = defaultdict(set)
    for interval in intervals:
        by_day[delivery_day(interval.start, rules)].add(interval.start)
    errors: list[BidError] = []
    for day, starts in sorted(by_day.items()):
        expected = day_intervals(day, rules)
        missing = [i for i in expected if i.start not in starts]
        if missing:
            errors.append(
                BidError(
                    rules.id,
                    BidRule.FULL_DAY,
                    f"{day.isoformat()} has {len(expected) - len(missing)} of its "
                    f"{len(expected)} intervals; the first missing one starts "
                    f"{missing[0].start.isoformat()}",
                    missing[0],
                )
            )
    return errors


def _gate_errors(
    intervals: Sequence[Interval], rules: RuleSetBase, submitted_at: datetime
) -> list[BidError]:
    first_of_day: dict[date, Interval] = {}
    for interval in sorted(intervals, key=lambda i: i.start):
        first_of_day.setdefault(delivery_day(interval.start, rules), interval)
    errors: list[BidError] = []
    for day, interval in sorted(first_of_day.items()):
        closes = rules.gate_closure.closes_at(day, rules.tz)
        if submitted_at > closes:
            errors.append(
                BidError(
                    rules.id,
                    BidRule.GATE_CLOSURE,
                    f"submitted {submitted_at.astimezone(rules.tz).isoformat()}, after the gate "
                    f"for {day.isoformat()} closed at {closes.isoformat()}",
                    interval,
                )
            )
    return errors
