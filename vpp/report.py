"""The park report: energy, carbon, zero-carbon indicators against thresholds, DR participation
and revenue per enterprise, as one HTML page with PNG plots (matplotlib, no display needed).

Inputs come from the engine's store (15-minute telemetry rollups, DR events, settlements) when
it has data for the period; otherwise the metered series are estimated from the enrollment
(load profiles, clear-sky PV, EV sessions) and the report says so on its first line.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")  # a report is written on servers and in CI: never open a window

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from dispatch.forecast import forecast_park
from dispatch.series import FloatArray, Horizon
from vpp.carbon import (
    CarbonAccount,
    EnergyCarbonTotals,
    GridEmissionFactor,
    IndicatorConfig,
    MeteredPeriod,
    TrendPoint,
    account,
    daily_trend,
)
from vpp.config.schema import Park
from vpp.domain import DrEvent
from vpp.errors import VPPError
from vpp.state import SettlementLine

log = logging.getLogger(__name__)

MAX_REPORT_DAYS = 366
COLORS = {"import": "#1f6fb2", "pv": "#f1c40f", "gen": "#7f8c8d", "export": "#2e8b57"}


class ReportError(VPPError):
    """A report cannot be made for these inputs; the message says which."""


@dataclass(frozen=True, slots=True)
class ReportInputs:
    """Everything a report is made of, for one park and period."""

    park: Park
    metered: MeteredPeriod
    source: str  # where the metered series come from, shown in the report
    dr_events: tuple[DrEvent, ...] = ()
    settlements: tuple[SettlementLine, ...] = ()
    currency: str = "CNY"


@dataclass(frozen=True, slots=True)
class ReportFiles:
    html: Path
    plots: tuple[Path, ...]


def period_horizon(start_day: date, end_day: date, timezone: str, interval: timedelta) -> Horizon:
    """Intervals from local midnight of `start_day` to local midnight after `end_day`."""
    if end_day < start_day:
        raise ReportError(f"--to {end_day} is before --from {start_day}")
    if (end_day - start_day).days + 1 > MAX_REPORT_DAYS:
        raise ReportError(f"a report covers at most {MAX_REPORT_DAYS} days")
    tz = ZoneInfo(timezone)
    start = datetime.combine(start_day, time(0), tz).astimezone(ZoneInfo("UTC"))
    end = datetime.combine(end_day + timedelta(days=1), time(0), tz).astimezone(ZoneInfo("UTC"))
    return Horizon(start, interval, int((end - start) // interval))


def estimate_metered(park: Park, horizon: Horizon) -> MeteredPeriod:
    """Metered series estimated from the enrollment: each asset as it runs on its own.

    Loads follow their profiles, PV its clear-sky output, EV depots their sessions; batteries
    and generators stay idle. Used when the store has no telemetry for the period.
    """
    forecast = forecast_park(park, horizon)
    series: dict[str, FloatArray] = {
        asset_id: np.asarray(f.power_kw, dtype=float) for asset_id, f in forecast.assets.items()
    }
    return MeteredPeriod(horizon, series)


def metered_from_rollups(
    park: Park, horizon: Horizon, rollups: Mapping[str, Sequence[tuple[datetime, float]]]
) -> tuple[MeteredPeriod, float]:
    """Metered series from (interval start, mean kW) rollups; missing intervals count as zero.

    Returns the period and the fraction of asset-intervals that had data.
    """
    n = horizon.intervals
    series: dict[str, FloatArray] = {}
    filled = 0
    known = {asset.id for _, asset in park.iter_assets()}
    for asset_id, rows in rollups.items():
        if asset_id not in known:
            continue
        values = np.zeros(n)
        for start, mean_kw in rows:
            k = horizon.index_of(start)
            if 0 <= k < n:
                values[k] = mean_kw
                filled += 1
        series[asset_id] = values
    coverage = filled / (n * len(known)) if known and n else 0.0
    return MeteredPeriod(horizon, series), coverage


# --- the report -------------------------------------------------------------------------------


def write_report(
    inputs: ReportInputs,
    factor: GridEmissionFactor,
    indicators: IndicatorConfig,
    out_dir: Path,
) -> ReportFiles:
    """Account the period and write `index.html` and its PNG plots into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = account(inputs.park, inputs.metered, factor, indicators)
    trend = daily_trend(result.park, result.horizon, inputs.park.timezone)
    plots = (
        _plot_energy(result, inputs.park.timezone, out_dir / "energy.png"),
        _plot_carbon(trend, result, out_dir / "carbon.png"),
        _plot_enterprises(result, out_dir / "enterprises.png"),
        _plot_dr(inputs, out_dir / "dr_revenue.png"),
    )
    page = out_dir / "index.html"
    page.write_text(_html(inputs, result, trend, plots), encoding="utf-8")
    return ReportFiles(page, plots)


def _daily(values: FloatArray, horizon: Horizon, timezone: str) -> tuple[list[date], FloatArray]:
    tz = ZoneInfo(timezone)
    days = [s.astimezone(tz).date() for s in horizon.starts()]
    unique = sorted(set(days))
    index = {d: i for i, d in enumerate(unique)}
    sums = np.zeros(len(unique))
    np.add.at(sums, [index[d] for d in days], values)
    return unique, sums


def _dates(days: Sequence[date]) -> npt.NDArray[np.datetime64]:
    return np.array(days, dtype="datetime64[D]")


def _plot_energy(result: CarbonAccount, timezone: str, path: Path) -> Path:
    park = result.park
    h = result.horizon
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=100)
    parts = (
        ("grid import", park.import_kwh, COLORS["import"]),
        ("PV self-consumed", park.pv_self_kwh, COLORS["pv"]),
        ("on-site generation", park.generator_kwh, COLORS["gen"]),
    )
    if h.intervals * h.hours <= 72:
        tz = ZoneInfo(timezone)
        # numpy datetimes carry no zone: plot park-local wall time
        x = np.array(
            [s.astimezone(tz).replace(tzinfo=None) for s in h.starts()], dtype="datetime64[ms]"
        )
        bottom = np.zeros(h.intervals)
        for label, values, color in parts:
            mw = values / h.hours / 1000
            ax.fill_between(
                x, bottom, bottom + mw, step="post", label=label, color=color, alpha=0.8
            )
            bottom = bottom + mw
        ax.step(
            x,
            -park.export_kwh / h.hours / 1000,
            where="post",
            color=COLORS["export"],
            label="export",
        )
        ax.set_ylabel("MW")
    else:
        bottom = np.zeros(0)
        days: list[date] = []
        for label, values, color in parts:
            days, sums = _daily(values, h, timezone)
            bottom = np.zeros(len(days)) if bottom.size == 0 else bottom
            ax.bar(_dates(days), sums / 1000, bottom=bottom, label=label, color=color)
            bottom = bottom + sums / 1000
        days, exported = _daily(park.export_kwh, h, timezone)
        ax.bar(_dates(days), -exported / 1000, label="export", color=COLORS["export"])
        ax.set_ylabel("MWh per day")
    ax.set_title("Park electricity supply")
    ax.legend(loc="upper left", fontsize=8, ncols=4)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_carbon(trend: Sequence[TrendPoint], result: CarbonAccount, path: Path) -> Path:
    ind = result.indicators
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    days = [p.day for p in trend]
    intensity = [p.carbon_intensity_t_per_tce or 0.0 for p in trend]
    clean = [100 * (p.clean_share or 0.0) for p in trend]
    left.plot(days, intensity, marker="o", color="#8e44ad", label="tCO2/tce")
    left.axhline(ind.carbon_intensity_max_t_per_tce, color="#c0392b", ls="--", label="threshold")
    left.set_title("Carbon per unit energy, by day")
    left.set_ylim(bottom=0)
    right.plot(days, clean, marker="o", color="#2e8b57", label="clean share %")
    right.axhline(100 * ind.clean_share_min, color="#c0392b", ls="--", label="threshold")
    right.set_title("Clean-energy share, by day")
    right.set_ylim(0, 100)
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_enterprises(result: CarbonAccount, path: Path) -> Path:
    ids = list(result.enterprises)
    totals = [result.enterprises[e].totals() for e in ids]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    left.barh(ids, [t.emission_t for t in totals], color="#7f8c8d")
    left.set_title("Emissions by enterprise (tCO2)")
    right.barh(ids, [100 * (t.clean_share or 0.0) for t in totals], color="#2e8b57")
    right.axvline(100 * result.indicators.clean_share_min, color="#c0392b", ls="--")
    right.set_title("Clean-energy share by enterprise (%)")
    right.set_xlim(0, 100)
    for ax in (left, right):
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_dr(inputs: ReportInputs, path: Path) -> Path:
    by_enterprise = _dr_totals(inputs)
    fig, ax = plt.subplots(figsize=(10, 3.0), dpi=100)
    if by_enterprise:
        ids = list(by_enterprise)
        ax.bar(ids, [by_enterprise[e][1] for e in ids], color="#2e8b57", label="revenue")
        ax.bar(ids, [-by_enterprise[e][2] for e in ids], color="#c0392b", label="penalty")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=20)
    else:
        ax.text(0.5, 0.5, "no demand-response settlements in this period", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"Demand-response revenue by enterprise ({inputs.currency})")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _dr_totals(inputs: ReportInputs) -> dict[str, tuple[float, float, float, int]]:
    """Per enterprise: delivered kWh, revenue, penalty, events settled."""
    totals: dict[str, tuple[float, float, float, int]] = {}
    for line in inputs.settlements:
        kwh, revenue, penalty, events = totals.get(line.enterprise_id, (0.0, 0.0, 0.0, 0))
        totals[line.enterprise_id] = (
            kwh + line.delivered_kwh,
            revenue + line.revenue,
            penalty + line.penalty,
            events + 1,
        )
    return totals


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _totals_row(name: str, t: EnergyCarbonTotals) -> str:
    cells = (
        _fmt(t.import_kwh / 1000, 1),
        _fmt(t.pv_kwh / 1000, 1),
        _fmt(t.generator_kwh / 1000, 1),
        _fmt(t.export_kwh / 1000, 1),
        _fmt(t.green_kwh / 1000, 1),
        _fmt(t.energy_tce, 1),
        _fmt(t.emission_t, 1),
        _fmt(t.carbon_intensity_t_per_tce, 3),
        _pct(t.clean_share),
    )
    return (
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td class=num>{c}</td>" for c in cells)
        + "</tr>"
    )


def _html(
    inputs: ReportInputs,
    result: CarbonAccount,
    trend: Sequence[TrendPoint],
    plots: Sequence[Path],
) -> str:
    park = inputs.park
    tz = ZoneInfo(park.timezone)
    first = result.horizon.start.astimezone(tz).date()
    last = (result.horizon.end - timedelta(seconds=1)).astimezone(tz).date()
    ind = result.indicators
    names = {e.id: e.name for e in park.enterprises}

    def verdict(ok: bool) -> str:
        return "<b class=ok>met</b>" if ok else "<b class=bad>not met</b>"

    indicator_rows = (
        f"<tr><td>Carbon emission per unit of energy consumption</td>"
        f"<td class=num>{_fmt(ind.carbon_intensity_t_per_tce, 3)} tCO2/tce</td>"
        f"<td class=num>≤ {ind.carbon_intensity_max_t_per_tce:g}</td><td>{verdict(ind.carbon_intensity_ok)}</td></tr>"
        f"<tr><td>Clean-energy consumption share</td><td class=num>{_pct(ind.clean_share)}</td>"
        f"<td class=num>≥ {100 * ind.clean_share_min:g} %</td><td>{verdict(ind.clean_share_ok)}</td></tr>"
    )
    enterprise_rows = "".join(
        _totals_row(f"{names.get(e, e)} ({e})", series.totals())
        for e, series in result.enterprises.items()
    )
    trend_rows = "".join(
        f"<tr><td>{p.day}</td><td class=num>{_fmt(p.energy_tce, 2)}</td><td class=num>{_fmt(p.emission_t, 2)}</td>"
        f"<td class=num>{_fmt(p.carbon_intensity_t_per_tce, 3)}</td><td class=num>{_pct(p.clean_share)}</td></tr>"
        for p in trend
    )
    dr = _dr_totals(inputs)
    dr_rows = (
        "".join(
            f"<tr><td>{html.escape(names.get(e, e))}</td><td class=num>{events}</td><td class=num>{_fmt(kwh, 0)}</td>"
            f"<td class=num>{_fmt(revenue, 2)}</td><td class=num>{_fmt(penalty, 2)}</td>"
            f"<td class=num>{_fmt(revenue - penalty, 2)}</td></tr>"
            for e, (kwh, revenue, penalty, events) in sorted(dr.items())
        )
        or "<tr><td colspan=6>no settlements in this period</td></tr>"
    )
    event_rows = (
        "".join(
            f"<tr><td>{html.escape(ev.event_id)}</td><td>{ev.start.astimezone(tz):%Y-%m-%d %H:%M}–{ev.end.astimezone(tz):%H:%M}</td>"
            f"<td class=num>{ev.reduction_kw:,.0f}</td><td class=num>{ev.price_per_mwh:,.0f}</td>"
            f"<td>{'yes' if ev.opted_in else 'opted out'}</td></tr>"
            for ev in inputs.dr_events
        )
        or "<tr><td colspan=5>no demand-response events in this period</td></tr>"
    )
    images = "".join(f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in plots)
    head = (
        "<th>MWh import</th><th>MWh PV</th><th>MWh generated</th><th>MWh export</th>"
        "<th>MWh green certificates</th><th>tce</th><th>tCO2</th><th>tCO2/tce</th><th>clean share</th>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(park.name)} — park report {first} to {last}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1d2733; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }}
th, td {{ border-bottom: 1px solid #dde3ea; padding: 4px 8px; text-align: left; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.ok {{ color: #2e8b57; }} .bad {{ color: #c0392b; }} .note {{ color: #66768a; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(park.name)} — park energy and carbon report</h1>
<p class=note>Period {first} to {last} ({park.timezone}); data: {html.escape(inputs.source)}.
Grid emission factor {_fmt(float(np.mean(result.grid_factor_kg_per_kwh)), 4)} kgCO2/kWh on average;
conventions in docs/carbon.md.</p>
<h2>Zero-carbon park indicators</h2>
<p>Park size {ind.annual_energy_tce:,.0f} tce/yr ({ind.size_basis}); band: {html.escape(ind.band.label)}.
{"" if ind.band.in_scheme else "<b class=bad>This size is outside the national scheme's range.</b>"}</p>
<table><tr><th>Indicator</th><th>Value</th><th>Threshold</th><th></th></tr>{indicator_rows}</table>
<h2>Energy and carbon</h2>
<table><tr><th></th>{head}</tr>
{_totals_row("Park (netted at the grid connection)", result.park.totals())}
{enterprise_rows}</table>
<h2>Trend by day</h2>
<table><tr><th>Day</th><th>tce</th><th>tCO2</th><th>tCO2/tce</th><th>clean share</th></tr>{trend_rows}</table>
<h2>Demand response</h2>
<table><tr><th>Event</th><th>Window</th><th>kW</th><th>{inputs.currency}/MWh</th><th>Participation</th></tr>{event_rows}</table>
<table><tr><th>Enterprise</th><th>Events</th><th>Delivered kWh</th><th>Revenue</th><th>Penalty</th><th>Net ({inputs.currency})</th></tr>{dr_rows}</table>
<h2>Plots</h2>
{images}
</body></html>
"""
