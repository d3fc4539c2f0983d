"""Benchmark of the day-ahead dispatch: one JSON line per run.

    python bench/dispatch.py --assets 1000          # synthetic park of 1,000 assets
    python bench/dispatch.py --config config/park.yaml
    python bench/dispatch.py --suite                # the standard set `make bench` runs
    python bench/dispatch.py --assets 1000 --dask   # parts as Dask actors (local cluster)

Each line: assets, intervals, wall_s (forecast + problem + solve), highs_s, model_s
(model generation), objective, bound (the solve's own proven lower bound, when it has one),
reference_objective (the monolithic Pyomo model's LP relaxation, a lower bound on the optimum
computed the straightforward way, up to `--reference-max` assets), gap_percent (objective
against the best of the two), revise_s (a second solve on the kept models, at the same day's
prices each moved by up to ±5 %), resolve_s (a third, at another day's prices), their ratios
to the first solve, fanout ("threads", or "dask" with `--dask`: the parts are solved by Dask actors
on a local cluster of `--workers` worker processes, one thread each, started before the clock
runs) and load_average (the machine's 1-minute load when the run started: the cores are
shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/, whose dispatch.py would shadow the package

from bench.reference import day_horizon, reference, scenario  # noqa: E402
from dispatch.fast import Decomposed, solve_monolithic  # noqa: E402
from dispatch.forecast import forecast_park  # noqa: E402
from dispatch.problem import build_problem  # noqa: E402
from dispatch.solve import Method, SolveOptions, solve  # noqa: E402
from market.prices import synthetic_prices  # noqa: E402
from vpp.config.loader import load_park  # noqa: E402
from vpp.config.schema import Park  # noqa: E402

if TYPE_CHECKING:
    from distributed import Client

SUITE = (100, 1000, 10_000)
REVISION = 0.05  # a revised price moves by up to this share
REFERENCE_MAX_ASSETS = 1000


def run(
    park: Park,
    *,
    seed: int,
    reference_max: int,
    options: SolveOptions,
    label: str,
    client: Client | None = None,
) -> dict[str, Any]:
    horizon = day_horizon(park)
    prices = synthetic_prices(horizon, seed=seed)
    load_average = os.getloadavg()[0]
    started = time.perf_counter()
    forecast = forecast_park(park, horizon)
    forecast_done = time.perf_counter()
    problem = build_problem(park, horizon, prices, forecast)
    problem_done = time.perf_counter()
    n = len(problem.asset_ids)
    many = options.method is Method.DECOMPOSED or (
        options.method is Method.AUTO and n > options.decompose_above_assets
    )
    decomposed = Decomposed(problem, options, client=client) if many else None
    if decomposed is not None and len(decomposed.parts) > 1:
        result = decomposed.solve()
    else:
        decomposed = None
        result = solve(problem, options)
    wall = time.perf_counter() - started
    line: dict[str, Any] = {
        "bench": "dispatch",
        "scenario": label,
        "load_average": round(load_average, 2),
        "workers": options.workers,
        "fanout": "threads" if client is None else "dask",
        "runs_as_bounds": options.runs_as_bounds,
        "assets": n,
        "intervals": horizon.intervals,
        "status": result.status.value,
        "wall_s": round(wall, 3),
        "forecast_s": round(forecast_done - started, 3),
        "problem_s": round(problem_done - forecast_done, 3),
        "solve_s": round(result.stats.wall_s, 3),
        "model_s": round(result.stats.build_s, 3),
        "highs_s": round(result.stats.solver_s, 3),
        "model_share_of_solve": round(result.stats.build_s / max(result.stats.solver_s, 1e-9), 3),
        "method": result.stats.method,
        "subproblems": result.stats.subproblems,
        "variables": result.stats.variables,
        "objective": None if result.objective is None else round(result.objective, 3),
    }
    # Re-solves on the kept models: the same day's prices revised (each moved by up to
    # ±REVISION), then another day's.
    rng = np.random.default_rng(seed)
    revised = prices * (1.0 + rng.uniform(-REVISION, REVISION, prices.size))
    for key, new_prices in (
        ("revise", revised),
        ("resolve", synthetic_prices(horizon, seed=seed + 1000)),
    ):
        t0 = time.perf_counter()
        if decomposed is not None:
            decomposed.resolve(new_prices)
        else:
            solve_monolithic(problem.with_prices(new_prices), options)
        seconds = time.perf_counter() - t0
        line[f"{key}_s"] = round(seconds, 3)
        line[f"{key}_ratio"] = round(seconds / max(result.stats.wall_s, 1e-9), 3)
    if decomposed is not None:
        decomposed.close()
    line["reference_objective"] = None
    bound = result.stats.lower_bound
    line["bound"] = None if bound is None else round(bound, 3)
    anchors = [] if bound is None else [bound]
    if n <= reference_max:
        ref = reference(problem)
        line["reference_objective"] = None if ref.objective is None else round(ref.objective, 3)
        line["reference_model_s"] = round(ref.build_s, 3)
        line["reference_highs_s"] = round(ref.highs_s, 3)
        line["reference_status"] = ref.status
        if ref.objective is not None:
            anchors.append(ref.objective)
    if anchors and result.objective is not None:
        anchor = max(anchors)  # both are lower bounds: the tighter one
        line["gap_percent"] = round(100.0 * (result.objective - anchor) / max(abs(anchor), 1e-9), 4)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, help="synthetic park with this many assets")
    parser.add_argument("--config", help="a park YAML instead of a synthetic park")
    parser.add_argument("--suite", action="store_true", help="the standard set (make bench)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reference-max", type=int, default=REFERENCE_MAX_ASSETS)
    parser.add_argument("--chunk-assets", type=int, default=SolveOptions().chunk_assets)
    parser.add_argument("--method", choices=[m.value for m in Method], default="auto")
    parser.add_argument(
        "--coarse", action="store_true", help="share the park limit once, without pricing it"
    )
    parser.add_argument("--workers", type=int, default=SolveOptions().workers)
    parser.add_argument(
        "--dask",
        action="store_true",
        help="solve the parts as Dask actors on a local cluster of --workers processes",
    )
    parser.add_argument(
        "--binary-runs",
        action="store_true",
        help="rounded solves fix the run binaries of a relaxation that has them "
        "(a tighter bound, 2-3x slower)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="per solve; default 20 s (the engine's) for one model, 600 s when decomposed",
    )
    args = parser.parse_args(argv)
    options = SolveOptions(
        time_limit_s=600.0 if args.time_limit is None else args.time_limit,
        chunk_assets=args.chunk_assets,
        method=Method(args.method),
        refine_shares=not args.coarse,
        workers=args.workers,
        runs_as_bounds=not args.binary_runs,
    )
    runs: list[tuple[Park, str]] = []
    if args.suite:
        demo = ROOT / "config" / "park.yaml"
        if demo.is_file():
            runs.append((load_park(demo, ROOT / "config" / "markets").park, "demo"))
        runs.extend((scenario(n, args.seed), f"synthetic-{n}") for n in SUITE)
    elif args.config:
        runs.append((load_park(args.config).park, Path(args.config).stem))
    elif args.assets:
        runs.append((scenario(args.assets, args.seed), f"synthetic-{args.assets}"))
    else:
        parser.error("give --assets N, --config PARK.yaml or --suite")
    if args.dask:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        with cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
            _run_all(runs, args, options, client)
    else:
        _run_all(runs, args, options, None)
    return 0


def _run_all(
    runs: list[tuple[Park, str]],
    args: argparse.Namespace,
    options: SolveOptions,
    client: Client | None,
) -> None:
    for park, label in runs:
        assets = sum(len(e.assets) for e in park.enterprises)
        one_model = options.method is Method.MONOLITHIC or (
            options.method is Method.AUTO and assets <= options.decompose_above_assets
        )
        chosen = options
        if args.time_limit is None and one_model:
            chosen = replace(options, time_limit_s=20.0)
        line = run(
            park,
            seed=args.seed,
            reference_max=args.reference_max,
            options=chosen,
            label=label,
            client=client,
        )
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
