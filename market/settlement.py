"""Settlement of demand-response events: baseline against meter, credited energy, money.

Per interval, delivered = baseline − metered (kW, positive = reduction); an event's performance
ratio is delivered / awarded energy. The rule set's `settlement` terms turn that into credited
energy, payment and penalty, over the whole event or interval by interval. The park's result is
split per enterprise: payment in proportion to what each delivered, penalty in proportion to each
one's shortfall against its share of the target. Results are frozen dataclasses, ready for the
storage layer; `settle_period` sums events per enterprise over a period.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from market.baseline import Baseline, BaselineSet
from market.rules import DemandResponseRules, SettlementRules
from vpp.domain import DrEvent, Interval
from vpp.errors import VPPError

PARK = "park"


class SettlementError(VPPError):
    """An event cannot be settled; `event_id` names it."""

    def __init__(self, event_id: str, message: str) -> None:
        self.event_id = event_id
        super().__init__(f"settlement of {event_id}: {message}")


@dataclass(frozen=True, slots=True)
class Credit:
    """The settlement terms applied to one delivered vs awarded quantity (energy, kWh)."""

    awarded_kwh: float
    delivered_kwh: float
    performance_ratio: float
    credited_kwh: float
    penalised_kwh: float  # shortfall below the penalty floor


@dataclass(frozen=True, slots=True)
class IntervalSettlement:
    """One interval of one site (an enterprise or the park) during an event."""

    event_id: str
    site: str
    interval: Interval
    baseline_kw: float
    metered_kw: float
    delivered_kw: float  # baseline − metered: positive is a reduction
    target_kw: float  # the site's share of the awarded reduction
    delivered_kwh: float
    target_kwh: float
    price_per_mwh: float


@dataclass(frozen=True, slots=True)
class SiteSettlement:
    """One site's result for one event; money in the rule set's currency."""

    event_id: str
    site: str
    target_kwh: float
    delivered_kwh: float
    performance_ratio: float
    credited_kwh: float
    payment: float
    penalty: float

    @property
    def net(self) -> float:
        return self.payment - self.penalty


@dataclass(frozen=True, slots=True)
class EventSettlement:
    """An event settled for the park, with its per-enterprise split and interval rows."""

    event_id: str
    product: str
    currency: str
    invitation: str
    start: datetime
    end: datetime
    compensation_multiple: float
    park: SiteSettlement
    penalised_kwh: float
    enterprises: tuple[SiteSettlement, ...]
    intervals: tuple[IntervalSettlement, ...]  # the park's, then each enterprise's

    @property
    def payment(self) -> float:
        return self.park.payment

    @property
    def penalty(self) -> float:
        return self.park.penalty

    def enterprise(self, site: str) -> SiteSettlement:
        return next(e for e in self.enterprises if e.site == site)


@dataclass(frozen=True, slots=True)
class PeriodSettlement:
    """Events settled over [start, end), summed per site (the park first, then enterprises)."""

    product: str
    currency: str
    start: datetime
    end: datetime
    event_ids: tuple[str, ...]
    sites: tuple[SiteSettlement, ...]  # event_id is "" in these sums

    def site(self, name: str) -> SiteSettlement:
        return next(s for s in self.sites if s.site == name)


@dataclass(frozen=True, slots=True)
class SettlementRecord:
    """One row for the store's settlements table (`Store.save_settlement` takes these fields)."""

    period_start: datetime
    period_end: datetime
    scope: str  # "event" or "period"
    enterprise_id: str | None  # None for the park
    payload: dict[str, str | float]


def settlement_records(result: EventSettlement | PeriodSettlement) -> list[SettlementRecord]:
    """The park's row and one per enterprise, as JSON-ready payloads for persistence."""
    if isinstance(result, EventSettlement):
        scope, start, end = "event", result.start, result.end
        sites: tuple[SiteSettlement, ...] = (result.park, *result.enterprises)
        extra: dict[str, str | float] = {
            "event_id": result.event_id,
            "invitation": result.invitation,
            "compensation_multiple": result.compensation_multiple,
        }
    else:
        scope, start, end = "period", result.start, result.end
        sites = result.sites
        extra = {"events": len(result.event_ids)}
    return [
        SettlementRecord(
            period_start=start,
            period_end=end,
            scope=scope,
            enterprise_id=None if site.site == PARK else site.site,
            payload={
                "product": result.product,
                "currency": result.currency,
                **extra,
                "target_kwh": site.target_kwh,
                "delivered_kwh": site.delivered_kwh,
                "performance_ratio": site.performance_ratio,
                "credited_kwh": site.credited_kwh,
                "payment": site.payment,
                "penalty": site.penalty,
                "net": site.net,
            },
        )
        for site in sites
    ]


def credit(awarded_kwh: float, delivered_kwh: float, rules: SettlementRules) -> Credit:
    """Apply the settlement terms to one delivered quantity against its award.

    Quantities may both be negative (an increase event): they are compared in the award's
    direction. Below `no_payment_below_ratio` nothing is credited; up to `credited_cap_ratio`
    delivery is credited in full, the excess at `excess_credit_share`; below
    `penalty_floor_ratio` the shortfall to the floor is penalised.
    """
    if awarded_kwh == 0:
        return Credit(0.0, delivered_kwh, 0.0, 0.0, 0.0)
    sign = 1.0 if awarded_kwh > 0 else -1.0
    awarded = abs(awarded_kwh)
    delivered = delivered_kwh * sign
    ratio = delivered / awarded
    cap = rules.credited_cap_ratio * awarded
    if ratio < rules.no_payment_below_ratio or delivered <= 0:
        credited = 0.0
    else:
        credited = min(delivered, cap) + rules.excess_credit_share * max(0.0, delivered - cap)
    penalised = 0.0
    if ratio < rules.penalty_floor_ratio:
        penalised = rules.penalty_floor_ratio * awarded - max(delivered, 0.0)
    return Credit(awarded_kwh, delivered_kwh, ratio, sign * credited, sign * penalised)


def settle_event(
    event: DrEvent,
    rules: DemandResponseRules,
    baselines: BaselineSet,
    metered: Mapping[str, pd.Series],
    targets_kw: Mapping[str, float] | None = None,
    prices_per_mwh: Mapping[datetime, float] | None = None,
) -> EventSettlement:
    """Settle one event for the park and split it per enterprise.

    `metered` maps each enterprise to its average kW per interval (timezone-aware index).
    `targets_kw` is each enterprise's share of the awarded reduction (default: in proportion to
    its baseline energy over the event). `prices_per_mwh` overrides the event price per interval
    (economic DR paid at the interval's market price). An opted-out event settles to nothing.
    """
    invitation = rules.invitation(event.invitation)
    if invitation is None:
        raise SettlementError(event.event_id, f"product {rules.id} has no {event.invitation} call")
    sites = sorted(baselines.enterprises)
    missing = [s for s in sites if s not in metered]
    if missing:
        raise SettlementError(event.event_id, f"no meter data for {', '.join(missing)}")
    starts = baselines.park.starts
    if not starts or starts[0] != event.start:
        raise SettlementError(event.event_id, "the baselines do not cover the event window")
    step = rules.interval
    hours = step / timedelta(hours=1)
    awarded_kw = event.reduction_kw if event.opted_in else 0.0
    shares = _shares(event, sites, baselines.enterprises, targets_kw)

    meter = {s: _meter(metered[s], starts, event.event_id, s) for s in sites}
    park_meter = [sum(meter[s][k] for s in sites) for k in range(len(starts))]
    prices = [_price(event, start, prices_per_mwh) for start in starts]

    def rows(
        site: str, baseline: Baseline, values: list[float], target_kw: float
    ) -> list[IntervalSettlement]:
        return [
            IntervalSettlement(
                event_id=event.event_id,
                site=site,
                interval=Interval(start, step),
                baseline_kw=baseline.baseline_kw[k],
                metered_kw=values[k],
                delivered_kw=baseline.baseline_kw[k] - values[k],
                target_kw=target_kw,
                delivered_kwh=(baseline.baseline_kw[k] - values[k]) * hours,
                target_kwh=target_kw * hours,
                price_per_mwh=prices[k],
            )
            for k, start in enumerate(starts)
        ]

    park_rows = rows(PARK, baselines.park, park_meter, awarded_kw)
    site_rows = {
        s: rows(s, baselines.enterprises[s], meter[s], awarded_kw * shares[s]) for s in sites
    }
    multiple = invitation.compensation_multiple
    terms = rules.settlement
    if terms.evaluation == "interval":
        credits = [credit(r.target_kwh, r.delivered_kwh, terms) for r in park_rows]
        pairs = list(zip(credits, park_rows, strict=True))
        payment = sum(abs(c.credited_kwh) / 1000 * r.price_per_mwh * multiple for c, r in pairs)
        penalty = sum(
            abs(c.penalised_kwh) / 1000 * r.price_per_mwh * terms.penalty_price_multiple
            for c, r in pairs
        )
        credited_kwh = sum(c.credited_kwh for c in credits)
        penalised_kwh = sum(c.penalised_kwh for c in credits)
    else:
        total = credit(
            sum(r.target_kwh for r in park_rows), sum(r.delivered_kwh for r in park_rows), terms
        )
        mean_price = sum(prices) / len(prices)
        payment = abs(total.credited_kwh) / 1000 * mean_price * multiple
        penalty = abs(total.penalised_kwh) / 1000 * mean_price * terms.penalty_price_multiple
        credited_kwh, penalised_kwh = total.credited_kwh, total.penalised_kwh
    awarded_kwh = sum(r.target_kwh for r in park_rows)
    delivered_kwh = sum(r.delivered_kwh for r in park_rows)
    park = SiteSettlement(
        event_id=event.event_id,
        site=PARK,
        target_kwh=awarded_kwh,
        delivered_kwh=delivered_kwh,
        performance_ratio=delivered_kwh / awarded_kwh if awarded_kwh else 0.0,
        credited_kwh=credited_kwh,
        payment=payment,
        penalty=penalty,
    )
    enterprises = _split(event, park, site_rows, terms)
    all_rows = tuple(park_rows) + tuple(r for s in sites for r in site_rows[s])
    return EventSettlement(
        event_id=event.event_id,
        product=rules.id,
        currency=rules.currency,
        invitation=event.invitation,
        start=event.start,
        end=event.end,
        compensation_multiple=multiple,
        park=park,
        penalised_kwh=penalised_kwh,
        enterprises=enterprises,
        intervals=all_rows,
    )


def settle_period(
    events: Sequence[EventSettlement], start: datetime, end: datetime
) -> PeriodSettlement:
    """Sum the events that start in [start, end), per site."""
    chosen = sorted((e for e in events if start <= e.start < end), key=lambda e: e.start)
    products = {e.product for e in chosen}
    if len(products) > 1:
        raise SettlementError(
            "period", f"events of several products: {', '.join(sorted(products))}"
        )
    totals: dict[str, list[float]] = {}
    for event in chosen:
        for site in (event.park, *event.enterprises):
            row = totals.setdefault(site.site, [0.0, 0.0, 0.0, 0.0, 0.0])
            row[0] += site.target_kwh
            row[1] += site.delivered_kwh
            row[2] += site.credited_kwh
            row[3] += site.payment
            row[4] += site.penalty
    order = [PARK, *sorted(s for s in totals if s != PARK)] if totals else []
    sites = tuple(
        SiteSettlement(
            event_id="",
            site=name,
            target_kwh=totals[name][0],
            delivered_kwh=totals[name][1],
            performance_ratio=totals[name][1] / totals[name][0] if totals[name][0] else 0.0,
            credited_kwh=totals[name][2],
            payment=totals[name][3],
            penalty=totals[name][4],
        )
        for name in order
    )
    return PeriodSettlement(
        product=chosen[0].product if chosen else "",
        currency=chosen[0].currency if chosen else "",
        start=start,
        end=end,
        event_ids=tuple(e.event_id for e in chosen),
        sites=sites,
    )


def _shares(
    event: DrEvent,
    sites: list[str],
    baselines: Mapping[str, Baseline],
    targets_kw: Mapping[str, float] | None,
) -> dict[str, float]:
    """Each enterprise's fraction of the awarded reduction."""
    if targets_kw is not None:
        unknown = sorted(set(targets_kw) - set(sites))
        if unknown:
            raise SettlementError(event.event_id, f"targets for unknown sites {', '.join(unknown)}")
        total = sum(targets_kw.get(s, 0.0) for s in sites)
        if total == 0 or not math.isfinite(total):
            raise SettlementError(event.event_id, "enterprise targets sum to zero")
        return {s: targets_kw.get(s, 0.0) / total for s in sites}
    energy = {s: sum(baselines[s].baseline_kw) for s in sites}
    total = sum(energy.values())
    if total <= 0:
        return {s: 1.0 / len(sites) for s in sites}
    return {s: energy[s] / total for s in sites}


def _split(
    event: DrEvent,
    park: SiteSettlement,
    site_rows: Mapping[str, list[IntervalSettlement]],
    terms: SettlementRules,
) -> tuple[SiteSettlement, ...]:
    sign = 1.0 if park.target_kwh >= 0 else -1.0
    delivered = {s: sum(r.delivered_kwh for r in rows) for s, rows in site_rows.items()}
    target = {s: sum(r.target_kwh for r in rows) for s, rows in site_rows.items()}
    positive = {s: max(0.0, sign * d) for s, d in delivered.items()}
    shortfall = {
        s: max(0.0, terms.penalty_floor_ratio * abs(target[s]) - max(0.0, sign * delivered[s]))
        for s in site_rows
    }
    total_positive = sum(positive.values())
    total_shortfall = sum(shortfall.values())
    result = []
    for s in sorted(site_rows):
        pay_share = positive[s] / total_positive if total_positive > 0 else 0.0
        penalty_share = shortfall[s] / total_shortfall if total_shortfall > 0 else 0.0
        result.append(
            SiteSettlement(
                event_id=event.event_id,
                site=s,
                target_kwh=target[s],
                delivered_kwh=delivered[s],
                performance_ratio=delivered[s] / target[s] if target[s] else 0.0,
                credited_kwh=park.credited_kwh * pay_share,
                payment=park.payment * pay_share,
                penalty=park.penalty * penalty_share,
            )
        )
    return tuple(result)


def _meter(series: pd.Series, starts: Sequence[datetime], event_id: str, site: str) -> list[float]:
    index = series.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise SettlementError(event_id, f"meter data of {site} needs a timezone-aware index")
    utc = pd.Series(series.to_numpy(dtype=float), index=index.tz_convert("UTC"))
    values = []
    for start in starts:
        stamp = pd.Timestamp(start).tz_convert("UTC")
        value = utc.get(stamp)
        if value is None or not math.isfinite(float(value)):
            raise SettlementError(event_id, f"no meter value of {site} at {start.isoformat()}")
        values.append(float(value))
    return values


def _price(event: DrEvent, start: datetime, prices: Mapping[datetime, float] | None) -> float:
    if prices is None:
        return event.price_per_mwh
    price = prices.get(start)
    if price is None or not math.isfinite(price):
        raise SettlementError(event.event_id, f"no price for the interval at {start.isoformat()}")
    return float(price)
