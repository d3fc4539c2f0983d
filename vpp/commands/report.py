"""`vpp report`: the park's energy, carbon, indicator and demand-response report for a period."""

from __future__ import annotations

import argparse
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from vpp.carbon import grid_factor, indicators_path_for, load_indicators
from vpp.config import LoadedConfig, load_park
from vpp.domain import DrEvent
from vpp.errors import VPPError
from vpp.report import (
    ReportInputs,
    estimate_metered,
    metered_from_rollups,
    period_horizon,
    write_report,
)
from vpp.state import SettlementLine
from vpp.store import Store

NAME = "report"
HELP = "write a park report (HTML with PNG plots): energy, carbon, indicators, DR revenue"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="park YAML file")
    parser.add_argument(
        "--from",
        dest="start",
        required=True,
        type=date.fromisoformat,
        help="first day, YYYY-MM-DD (park-local)",
    )
    parser.add_argument(
        "--to",
        dest="end",
        required=True,
        type=date.fromisoformat,
        help="last day, YYYY-MM-DD (inclusive)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for index.html and the plots"
    )
    parser.add_argument("--markets", default=None, help="folder of market rule sets")
    parser.add_argument(
        "--indicators",
        type=Path,
        default=None,
        help="indicator thresholds (default: indicators.yaml beside CONFIG)",
    )
    parser.add_argument(
        "--store", default=None, help="database URL (default: the config's engine.storage_url)"
    )
    parser.add_argument("--estimate", action="store_true", help="estimate from the enrollment even if the store has data")  # fmt: skip


def _store_inputs(
    loaded: LoadedConfig, url: str, start: datetime, end: datetime, horizon: Any
) -> ReportInputs | None:
    """Report inputs from the engine's database, or None when it holds no telemetry then."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    store = Store(url)
    try:
        park = loaded.park
        rollups = {
            asset.id: [(r.start, r.mean_power_kw) for r in store.rollups(asset.id, start, end)]
            for _, asset in park.iter_assets()
        }
        metered, coverage = metered_from_rollups(park, horizon, rollups)
        if coverage == 0:
            return None
        events: list[DrEvent] = store.dr_events(start, end)
        lines = [
            _settlement_line(row, loaded.spot.currency) for row in store.settlements(start, end)
        ]
    finally:
        store.close()
    return ReportInputs(
        park=park,
        metered=metered,
        source=f"metered telemetry from {url.rsplit('@', maxsplit=1)[-1]} ({100 * coverage:.0f} % of asset-intervals)",
        dr_events=tuple(events),
        settlements=tuple(line for line in lines if line is not None),
        currency=loaded.spot.currency,
    )


def _settlement_line(row: dict[str, Any], currency: str) -> SettlementLine | None:
    """A stored per-enterprise settlement as a report line; park-scope rows are skipped."""
    enterprise = row.get("enterprise_id")
    if not enterprise:
        return None
    return SettlementLine(
        enterprise_id=str(enterprise),
        reference=str(row.get("event_id", "")),
        start=datetime.fromisoformat(row["period_start"]),
        end=datetime.fromisoformat(row["period_end"]),
        baseline_kwh=float(row.get("baseline_kwh", 0.0)),
        metered_kwh=float(row.get("metered_kwh", 0.0)),
        delivered_kwh=float(row.get("delivered_kwh", 0.0)),
        committed_kwh=float(row.get("target_kwh", row.get("committed_kwh", 0.0))),
        revenue=float(row.get("payment", row.get("revenue", 0.0))),
        penalty=float(row.get("penalty", 0.0)),
        currency=str(row.get("currency", currency)),
    )


def run(args: argparse.Namespace) -> int:
    loaded = load_park(args.config, args.markets)
    park = loaded.park
    indicators = load_indicators(args.indicators or indicators_path_for(args.config))
    factor = grid_factor(park.carbon, Path(args.config).parent, park.timezone)
    interval = timedelta(minutes=park.engine.market_interval_min)
    horizon = period_horizon(args.start, args.end, park.timezone, interval)
    inputs = None
    if not args.estimate:
        url = args.store or park.engine.storage_url
        try:
            inputs = _store_inputs(loaded, url, horizon.start, horizon.end, horizon)
        except VPPError as err:
            print(f"vpp report: store not used ({err}); estimating from the enrollment")
    if inputs is None:
        inputs = ReportInputs(
            park=park,
            metered=estimate_metered(park, horizon),
            source="estimated from the enrollment (load profiles, clear-sky PV, EV sessions); "
            "no metered telemetry for the period",
            currency=loaded.spot.currency,
        )
    files = write_report(inputs, factor, indicators, args.out)
    print(f"report written to {files.html} ({len(files.plots)} plots); data: {inputs.source}")
    return 0
