"""`vpp tradeoff`: the cost-vs-emissions curve of one day's dispatch under several carbon prices.

Each carbon price (currency per tCO2) is added to the dispatch objective; the day is solved
once per price and its operating cost (objective without the carbon term) and its accounted
emissions are reported, with the Pareto front. Prices come from a CSV (`timestamp,price`), or,
without one, from an example peak/flat/valley day shape (say so in anything you publish).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from dispatch.forecast import forecast_park
from dispatch.problem import BuildOptions, build_problem
from dispatch.series import FloatArray, Horizon
from dispatch.solve import SolveOptions, solve
from vpp.carbon import (
    GridEmissionFactor,
    IndicatorConfig,
    MeteredPeriod,
    TradeoffPoint,
    account,
    grid_factor,
    indicators_path_for,
    load_indicators,
    local_day_horizon,
    pareto_front,
    tradeoff_curve,
)
from vpp.config import load_park
from vpp.config.schema import Park
from vpp.errors import ConfigError, Problem

NAME = "tradeoff"
HELP = "cost-vs-emissions trade-off of one day's dispatch over several carbon prices"

DEFAULT_CARBON_PRICES = "0,50,100,200,400,800,1600"
# Example day-ahead shape (share of the flat price, by local hour): valley at night, peaks in
# the late morning and the evening, as in the provincial time-of-use tariffs.
EXAMPLE_FLAT_PRICE_PER_MWH = 520.0
EXAMPLE_SHAPE = (
    [0.45] * 8 + [1.0] * 2 + [1.5] * 2 + [1.0] * 5 + [1.5] * 4 + [1.0] * 2 + [0.45]
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="park YAML file")
    parser.add_argument("--date", required=True, type=date.fromisoformat, help="the day, YYYY-MM-DD (park-local)")  # fmt: skip
    parser.add_argument("--carbon-prices", default=DEFAULT_CARBON_PRICES, help=f"currency per tCO2, comma-separated (default {DEFAULT_CARBON_PRICES})")  # fmt: skip
    parser.add_argument("--prices", type=Path, default=None, help="CSV timestamp,price_per_mwh for the day (default: an example shape)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="folder for tradeoff.json and tradeoff.png")  # fmt: skip
    parser.add_argument("--markets", default=None, help="folder of market rule sets")
    parser.add_argument("--indicators", type=Path, default=None, help="indicator file (default: indicators.yaml beside CONFIG)")  # fmt: skip
    parser.add_argument("--time-limit", type=float, default=None, help="solver time limit per point, s (default: the config's)")  # fmt: skip


def parse_carbon_prices(text: str) -> list[float]:
    try:
        prices = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            [Problem("--carbon-prices", None, "", f"not numbers: {text!r}")]
        ) from None
    if not prices or any(not math.isfinite(p) or p < 0 for p in prices):
        raise ConfigError([Problem("--carbon-prices", None, "", "need finite prices >= 0")])
    return prices


def example_prices(horizon: Horizon, timezone: str) -> FloatArray:
    tz = ZoneInfo(timezone)
    hours = [s.astimezone(tz).hour for s in horizon.starts()]
    return np.array([EXAMPLE_FLAT_PRICE_PER_MWH * EXAMPLE_SHAPE[h] for h in hours])


def read_prices(path: Path, horizon: Horizon) -> FloatArray:
    """One price per interval of the day from `timestamp,price_per_mwh` rows (ISO with offset)."""
    values = np.full(horizon.intervals, np.nan)
    with path.open(encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith("#") or row[0].strip().lower() == "timestamp":
                continue
            try:
                moment = datetime.fromisoformat(row[0].strip())
                price = float(row[1])
            except (ValueError, IndexError):
                raise ConfigError([Problem(str(path), line_no, "", "expected 'timestamp,price_per_mwh'")]) from None  # fmt: skip
            if moment.tzinfo is None:
                raise ConfigError([Problem(str(path), line_no, "", "timestamp has no UTC offset")])
            k = horizon.index_of(moment)
            if 0 <= k < horizon.intervals:
                values[k] = price
    missing = int(np.isnan(values).sum())
    if missing:
        raise ConfigError([Problem(str(path), None, "", f"{missing} intervals of the day have no price")])  # fmt: skip
    return values


def _without_certificates(park: Park) -> Park:
    carbon = park.carbon.model_copy(update={"green_certificates_mwh_per_year": 0.0})
    return park.model_copy(update={"carbon": carbon})


def evaluate_day(
    park: Park,
    horizon: Horizon,
    prices: FloatArray,
    factor: GridEmissionFactor,
    indicators: IndicatorConfig,
    time_limit_s: float,
) -> tuple[Callable[[float], TradeoffPoint], list[float]]:
    """A function that solves the day at a carbon price, and the list it adds accounted
    emissions (with green certificates) to, one per call."""
    forecast = forecast_park(park, horizon)
    grid_kg = factor.at(horizon.starts())
    bare = _without_certificates(park)
    accounted: list[float] = []

    def evaluate(carbon_price: float) -> TradeoffPoint:
        problem = build_problem(
            park, horizon, prices, forecast, options=BuildOptions(carbon_price_per_t=carbon_price)
        )
        # The optimiser takes the park's constant factor; a configured series replaces it here.
        problem = replace(problem, grid_emission_kg_per_kwh=grid_kg)
        result = solve(problem, SolveOptions(time_limit_s=time_limit_s))
        if result.schedule is None or result.objective is None:
            accounted.append(math.nan)
            return TradeoffPoint(carbon_price, result.status.value, None, None)
        schedule = result.schedule
        series = {a: schedule.power_of(a) for a in schedule.asset_ids}
        metered = MeteredPeriod(horizon, series)
        # The objective's carbon term counts emissions as the model does (no certificates).
        modelled_t = account(bare, metered, factor, indicators).park.totals().emission_t
        accounted.append(account(park, metered, factor, indicators).park.totals().emission_t)
        return TradeoffPoint(
            carbon_price,
            result.status.value,
            result.objective - carbon_price * modelled_t,
            modelled_t,
        )

    return evaluate, accounted


def run(args: argparse.Namespace) -> int:
    loaded = load_park(args.config, args.markets)
    park = loaded.park
    indicators = load_indicators(args.indicators or indicators_path_for(args.config))
    factor = grid_factor(park.carbon, Path(args.config).parent, park.timezone)
    horizon = local_day_horizon(args.date, park.timezone, timedelta(minutes=park.engine.market_interval_min))  # fmt: skip
    carbon_prices = parse_carbon_prices(args.carbon_prices)
    if args.prices is not None:
        prices = read_prices(args.prices, horizon)
        price_source = str(args.prices)
    else:
        prices = example_prices(horizon, park.timezone)
        price_source = "example peak/flat/valley shape"
    time_limit = args.time_limit or park.engine.solver_time_limit_s
    evaluate, accounted = evaluate_day(park, horizon, prices, factor, indicators, time_limit)
    points = tradeoff_curve(evaluate, carbon_prices)
    front = {p.carbon_price_per_t for p in pareto_front(points)}
    currency = loaded.spot.currency
    print(f"{park.id} {args.date}: prices {price_source} ({currency}/MWh)")
    print(f"{'carbon price':>14} {'status':>10} {'cost ' + currency:>14} {'tCO2 (model)':>13} {'tCO2 (accounted)':>17} pareto")  # fmt: skip
    for point, accounted_t in zip(points, accounted, strict=True):
        cost = "–" if point.energy_cost is None else f"{point.energy_cost:,.0f}"
        model = "–" if point.emission_t is None else f"{point.emission_t:,.2f}"
        counted = "–" if math.isnan(accounted_t) else f"{accounted_t:,.2f}"
        mark = "*" if point.carbon_price_per_t in front else ""
        print(f"{point.carbon_price_per_t:>14,.0f} {point.status:>10} {cost:>14} {model:>13} {counted:>17} {mark}")  # fmt: skip
    if args.out is not None:
        _write(args.out, park, args.date, currency, price_source, points, accounted)
        print(f"written {args.out / 'tradeoff.json'} and {args.out / 'tradeoff.png'}")
    return 0 if all(p.energy_cost is not None for p in points) else 1


def _write(
    out: Path,
    park: Park,
    day: date,
    currency: str,
    price_source: str,
    points: list[TradeoffPoint],
    accounted: list[float],
) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "carbon_price_per_t": p.carbon_price_per_t,
            "status": p.status,
            "operating_cost": p.energy_cost,
            "emission_t_modelled": p.emission_t,
            "emission_t_accounted": None if math.isnan(a) else a,
        }
        for p, a in zip(points, accounted, strict=True)
    ]
    document = {"park": park.id, "date": day.isoformat(), "currency": currency, "prices": price_source, "points": rows}  # fmt: skip
    (out / "tradeoff.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    solved = [
        (p.carbon_price_per_t, p.emission_t, p.energy_cost)
        for p in points
        if p.energy_cost is not None and p.emission_t is not None
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot([e for _, e, _ in solved], [c for _, _, c in solved], marker="o")
    for price, emission, cost in solved:
        ax.annotate(f"{price:g}", (emission, cost), textcoords="offset points", xytext=(5, 5), fontsize=8)  # fmt: skip
    ax.set_xlabel("emissions, tCO2 per day")
    ax.set_ylabel(f"operating cost, {currency} per day")
    ax.set_title(f"{park.name}, {day}: cost vs emissions (labels: {currency}/tCO2)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png")
    plt.close(fig)
