"""`vpp schedule --config CONFIG --out OUT.csv`: the park's day-ahead schedule, one row per
interval and asset, and one JSON line on stdout with status, objective, sizes and timings."""

from __future__ import annotations

import argparse
import csv
import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from dispatch.forecast import forecast_park
from dispatch.problem import BuildOptions, DispatchProblem, build_problem
from dispatch.series import FloatArray, Horizon
from dispatch.solve import Backend, Result, SolveOptions, solve
from market.prices import read_prices, synthetic_prices
from vpp.config import load_park
from vpp.config.schema import Park
from vpp.errors import ConfigError, Problem

NAME = "schedule"
HELP = "optimise the park's day-ahead schedule and write it as CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="park YAML file")
    parser.add_argument(
        "--markets", default=None, help="folder of market rule sets (default: beside CONFIG)"
    )
    parser.add_argument(
        "--prices",
        default=None,
        help="CSV timestamp,price (ISO 8601 with offset, currency per MWh); "
        "default: a synthetic day-ahead shape",
    )
    parser.add_argument(
        "--out", required=True, help="CSV to write: interval_start,asset_id,power_kw"
    )
    parser.add_argument("--plot", default=None, help="PNG of the schedule and prices")
    parser.add_argument(
        "--start",
        default=None,
        help="first interval, ISO 8601 (default: the prices' start, else the next local midnight)",
    )
    parser.add_argument("--carbon-price", type=float, default=0.0, help="currency per tonne CO2")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic prices")
    parser.add_argument(
        "--backend", choices=[b.value for b in Backend], default=Backend.HIGHS.value
    )


def _start(args: argparse.Namespace, park: Park, prices_start: datetime | None) -> datetime:
    if args.start is not None:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError:
            raise ConfigError(
                [Problem("--start", None, "", f"{args.start!r} is not ISO 8601")]
            ) from None
        return start if start.tzinfo is not None else start.replace(tzinfo=park.tz)
    if prices_start is not None:
        return prices_start
    tomorrow = datetime.now(park.tz).date() + timedelta(days=1)
    return datetime.combine(tomorrow, datetime.min.time(), park.tz)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    loaded = load_park(args.config, args.markets)
    park = loaded.park
    series = read_prices(args.prices) if args.prices else None
    start = _start(args, park, series.start if series is not None else None)
    interval = timedelta(minutes=park.engine.market_interval_min)
    horizon = Horizon(start, interval, int(timedelta(hours=park.engine.horizon_h) / interval))
    prices = series.on(horizon) if series is not None else synthetic_prices(horizon, args.seed)
    forecast = forecast_park(park, horizon)
    problem = build_problem(
        park, horizon, prices, forecast, options=BuildOptions(carbon_price_per_t=args.carbon_price)
    )
    options = SolveOptions.from_engine(park.engine, backend=Backend(args.backend))
    result = solve(problem, options)
    if result.schedule is not None:
        write_schedule(Path(args.out), result, park)
        if args.plot:
            plot_schedule(Path(args.plot), result, problem, prices)
    print(json.dumps(_summary(result, problem, args, time.perf_counter() - started, series)))
    return 0 if result.ok else 1


def _summary(
    result: Result,
    problem: DispatchProblem,
    args: argparse.Namespace,
    wall_s: float,
    series: object,
) -> dict[str, Any]:
    diagnosis = result.diagnosis
    return {
        "status": result.status.value,
        "termination": result.termination.value,
        "objective": None if result.objective is None else round(result.objective, 2),
        "assets": len(problem.asset_ids),
        "intervals": problem.intervals,
        "start": problem.horizon.start.isoformat(),
        "wall_s": round(wall_s, 3),
        "solve_s": round(result.stats.wall_s, 3),
        "model_s": round(result.stats.build_s, 3),
        "highs_s": round(result.stats.solver_s, 3),
        "method": result.stats.method,
        "prices": "file" if series is not None else f"synthetic(seed={args.seed})",
        "out": args.out if result.schedule is not None else None,
        "violations": []
        if diagnosis is None
        else [str(v) for v in (*diagnosis.hard, *diagnosis.soft)],
    }


def write_schedule(path: Path, result: Result, park: Park) -> None:
    """Long format, positive = drawn from the grid; times in the park's time zone."""
    schedule = result.schedule
    assert schedule is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["interval_start", "asset_id", "power_kw"])
        for start, asset, power in schedule.rows():
            writer.writerow([start.astimezone(park.tz).isoformat(), asset, f"{power:.3f}"])


def plot_schedule(path: Path, result: Result, problem: DispatchProblem, prices: FloatArray) -> None:
    import matplotlib  # noqa: PLC0415 - only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    schedule = result.schedule
    assert schedule is not None
    starts = problem.horizon.starts()
    kinds = problem.asset_kinds
    fig, (ax, ax_price) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=[3, 1])
    positive = np.zeros(problem.intervals)
    negative = np.zeros(problem.intervals)
    for j, kind in enumerate(dict.fromkeys(kinds)):
        rows = [i for i, k in enumerate(kinds) if k is kind]
        power = schedule.power_kw[rows].sum(axis=0) / 1000.0
        up = np.maximum(power, 0)
        down = np.minimum(power, 0)
        width = problem.horizon.interval
        colour = f"C{j}"
        ax.bar(
            starts, up, width=width, bottom=positive, label=kind.value, align="edge", color=colour
        )
        ax.bar(starts, down, width=width, bottom=negative, align="edge", color=colour)
        positive += up
        negative += down
    ax.plot(
        starts, schedule.park_kw / 1000.0, color="black", drawstyle="steps-post", label="park net"
    )
    ax.set_ylabel("MW (+ drawn)")
    ax.legend(loc="upper left", fontsize="small", ncol=4)
    ax.set_title(f"Day-ahead schedule — {result.status.value}, objective {result.objective:,.0f}")
    ax_price.step(starts, prices, where="post")
    ax_price.set_ylabel("price / MWh")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
