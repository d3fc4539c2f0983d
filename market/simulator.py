"""A market to bid into without a market: clears curves against a price series, calls DR events.

The park is a price-taker: its bids do not move the price. Each interval clears at the uniform
price of the given series and the park is awarded the power its curve offers at that price. DR
events are issued from grid calls (given, or derived from price peaks) against the park's offers,
each notified as early as the product's invitation requires. Pure computation: the caller owns
the clock and passes the submission time in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from market.formats import AwardSet, Submission
from market.rules import DemandResponseRules, InvitationKind, SpotMarketRules
from market.validate import check_dr_offers, check_spot_bids, delivery_day
from vpp.domain import Award, BidCurve, DrEvent, DrOffer, Interval
from vpp.errors import VPPError


class ClearingError(VPPError):
    """The simulator cannot clear a submission or issue a call; `market` says where."""

    def __init__(self, market: str, message: str, interval: Interval | None = None) -> None:
        self.market = market
        self.interval = interval
        where = f" interval {interval.start.isoformat()}" if interval is not None else ""
        super().__init__(f"{market}{where}: {message}")


@dataclass(frozen=True, slots=True)
class DrCall:
    """The grid asks for demand response over [start, end) through one invitation kind.

    `price_per_mwh` is the call's clearing price: offers at or below it are taken and paid it.
    """

    start: datetime
    end: datetime
    invitation: InvitationKind
    price_per_mwh: float
    direction: Literal["reduction", "increase"] = "reduction"


def clear_spot(
    curves: Sequence[BidCurve], prices: Mapping[datetime, float], rules: SpotMarketRules
) -> tuple[Award, ...]:
    """Award each curve its power at the interval's price (price-taker, uniform price).

    `prices` maps interval starts (timezone-aware) to the clearing price; a pandas Series
    indexed that way works through `series.to_dict()`.
    """
    awards = []
    for curve in sorted(curves, key=lambda c: c.interval.start):
        price = prices.get(curve.interval.start)
        if price is None or not math.isfinite(price):
            raise ClearingError(rules.id, "no clearing price in the price series", curve.interval)
        awards.append(Award(curve.interval, curve.power_at(price), float(price), rules.id))
    return tuple(awards)


def dr_calls_from_prices(
    prices: Mapping[datetime, float],
    rules: DemandResponseRules,
    trigger_price_per_mwh: float,
    invitation: InvitationKind = "day_ahead",
    call_price_per_mwh: float | None = None,
) -> list[DrCall]:
    """Grid calls where the price reaches the trigger: one per run of high-price intervals.

    A run shorter than the product's minimum duration is extended to it; a longer one is cut to
    the most expensive window of the maximum duration. Per day, at most `max_events_per_day`
    calls are kept, the most expensive first. The call price is `call_price_per_mwh`, or the
    window's mean price capped at the product's bid cap.
    """
    step = rules.interval
    starts = sorted(t for t, p in prices.items() if math.isfinite(p))
    runs: list[list[datetime]] = []
    for start in starts:
        if prices[start] < trigger_price_per_mwh:
            continue
        if runs and runs[-1][-1] + step == start:
            runs[-1].append(start)
        else:
            runs.append([start])
    min_n = math.ceil(rules.min_duration_min / rules.interval_min)
    max_n = max(min_n, int(rules.max_duration_min // rules.interval_min))
    windows: list[tuple[float, datetime, int]] = []
    for run in runs:
        count = min(max(len(run), min_n), max_n)
        best: tuple[float, datetime] | None = None
        for first in run[: max(1, len(run) - count + 1)]:
            window = [first + step * k for k in range(count)]
            known = [prices[t] for t in window if t in prices]
            mean = sum(known) / len(known)
            if best is None or mean > best[0]:
                best = (mean, first)
        assert best is not None
        windows.append((best[0], best[1], count))
    per_day: dict[date, list[tuple[float, datetime, int]]] = defaultdict(list)
    for candidate in windows:
        per_day[delivery_day(candidate[1], rules)].append(candidate)
    calls = []
    for day in sorted(per_day):
        chosen = sorted(per_day[day], key=lambda w: (-w[0], w[1]))
        if rules.max_events_per_day is not None:
            chosen = chosen[: rules.max_events_per_day]
        for mean, first, count in sorted(chosen, key=lambda w: w[1]):
            price = call_price_per_mwh
            if price is None:
                price = min(mean, rules.bid_price_cap_per_mwh)
            calls.append(DrCall(first, first + step * count, invitation, price))
    return _without_overlaps(calls)


def _without_overlaps(calls: list[DrCall]) -> list[DrCall]:
    kept: list[DrCall] = []
    for call in calls:
        if kept and call.start < kept[-1].end:
            continue  # a run extended to the minimum duration swallowed the next one
        kept.append(call)
    return kept


def issue_dr_events(
    offers: Sequence[DrOffer], calls: Sequence[DrCall], rules: DemandResponseRules
) -> tuple[DrEvent, ...]:
    """One event per call that the park's offers cover in full at or below the call price.

    The called reduction is the smallest offered over the call's intervals (what the park can
    hold throughout); the event is notified the invitation's notice time before it starts.
    A call that breaks the product's own rules (unknown invitation, duration out of bounds,
    too many events in a day) is a ClearingError.
    """
    by_start = {o.interval.start: o for o in offers}
    events: list[DrEvent] = []
    per_day: dict[date, int] = defaultdict(int)
    for call in sorted(calls, key=lambda c: c.start):
        _check_call(call, rules)
        day = delivery_day(call.start, rules)
        per_day[day] += 1
        if rules.max_events_per_day is not None and per_day[day] > rules.max_events_per_day:
            raise ClearingError(
                rules.id,
                f"more than {rules.max_events_per_day} events called on {day.isoformat()}",
            )
        sign = 1.0 if call.direction == "reduction" else -1.0
        offered: list[float] = []
        moment = call.start
        while moment < call.end:
            offer = by_start.get(moment)
            if (
                offer is None
                or offer.reduction_kw * sign <= 0
                or offer.price_per_mwh > call.price_per_mwh
            ):
                break
            offered.append(abs(offer.reduction_kw))
            moment += rules.interval
        else:
            invitation = rules.invitation(call.invitation)
            assert invitation is not None
            events.append(
                DrEvent(
                    event_id=f"{rules.id}-{call.start.astimezone(rules.tz):%Y%m%dT%H%M}",
                    product=rules.id,
                    start=call.start,
                    end=call.end,
                    notified_at=call.start - timedelta(minutes=invitation.notice_min),
                    reduction_kw=sign * min(offered),
                    price_per_mwh=call.price_per_mwh,
                    invitation=call.invitation,
                )
            )
    return tuple(events)


def _check_call(call: DrCall, rules: DemandResponseRules) -> None:
    span = Interval(call.start, rules.interval)
    if rules.invitation(call.invitation) is None:
        kinds = ", ".join(i.kind for i in rules.invitations)
        raise ClearingError(
            rules.id, f"the product has no {call.invitation} invitation (only {kinds})", span
        )
    minutes = (call.end - call.start) / timedelta(minutes=1)
    if not rules.min_duration_min <= minutes <= rules.max_duration_min:
        raise ClearingError(
            rules.id,
            f"a {minutes:g} min call is outside the product's "
            f"{rules.min_duration_min:g}-{rules.max_duration_min:g} min durations",
            span,
        )
    if rules.direction not in ("both", call.direction):
        raise ClearingError(
            rules.id, f"a {call.direction} call to a {rules.direction} product", span
        )


class MarketSimulator:
    """A spot market and, optionally, a DR product run against a price series and grid calls."""

    def __init__(
        self,
        spot: SpotMarketRules,
        prices: Mapping[datetime, float],
        dr: DemandResponseRules | None = None,
        dr_calls: Sequence[DrCall] = (),
    ) -> None:
        self.spot = spot
        self.prices = dict(prices)
        self.dr = dr
        self.dr_calls = tuple(dr_calls)

    def submit(self, submission: Submission, cleared_at: datetime | None = None) -> AwardSet:
        """Check the submission against the rules, clear it and call the DR events it earns.

        An invalid bid raises BidError before anything is cleared.
        """
        known = {self.spot.id} | ({self.dr.id} if self.dr is not None else set())
        if submission.market not in known:
            raise ClearingError(
                submission.market, f"not a market of this simulator ({', '.join(sorted(known))})"
            )
        awards: tuple[Award, ...] = ()
        events: tuple[DrEvent, ...] = ()
        if submission.bid_curves:
            check_spot_bids(submission.bid_curves, self.spot, submission.submitted_at)
            awards = clear_spot(submission.bid_curves, self.prices, self.spot)
        if submission.dr_offers:
            if self.dr is None:
                raise ClearingError(submission.market, "DR offers sent but no DR product runs")
            check_dr_offers(submission.dr_offers, self.dr, submission.submitted_at)
            events = issue_dr_events(submission.dr_offers, self.dr_calls, self.dr)
        return AwardSet(
            market=submission.market,
            participant=submission.participant,
            cleared_at=cleared_at or submission.submitted_at,
            awards=awards,
            dr_events=events,
        )
