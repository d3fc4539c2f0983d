"""The dashboard in headless Chromium: it loads without console errors and draws the demo park.

The engine's read model is filled the way the loops fill it — forecasts, a real HiGHS schedule,
the flexibility envelope, bids, awards, a DR event, settlements and the carbon account of the
demo park — and served on loopback; Debian's chromium and chromedriver drive the page. The
screenshot is kept as artifacts/dashboard.png.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from dispatch.flexibility import build_envelope
from dispatch.forecast import forecast_park
from dispatch.problem import BuildOptions, build_problem
from dispatch.solve import SolveOptions, solve
from vpp.api import StateActions, TokenStore, create_app, serve
from vpp.carbon import account as carbon_account
from vpp.carbon import daily_trend, grid_factor, load_indicators, local_day_horizon
from vpp.clock import ManualClock
from vpp.config import load_park
from vpp.domain import Award, BidCurve, BidStep, DrEvent, DrOffer, Interval, Measurement
from vpp.fleet import Fleet
from vpp.metrics import Metrics
from vpp.report import estimate_metered
from vpp.state import ControlCycleView, EngineState, SettlementLine

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARK = ROOT / "config" / "park.yaml"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
VIEWER = "dashboard-viewer-token-0001"
DAY = date(2026, 7, 15)


def demo_state() -> tuple[EngineState, Fleet, ManualClock, StateActions]:
    """The demo park at 10:00 on a summer weekday, with a day of results published."""
    loaded = load_park(PARK)
    park = loaded.park
    tz = ZoneInfo(park.timezone)
    now = datetime(2026, 7, 15, 10, 0, tzinfo=tz)
    clock = ManualClock(now)
    fleet = Fleet(park, clock)
    horizon = local_day_horizon(DAY, park.timezone, timedelta(minutes=15))
    n = horizon.intervals
    forecast = forecast_park(park, horizon)
    prices = np.array(
        [320.0 if k < 32 else 780.0 if 40 <= k < 48 or 68 <= k < 84 else 520.0 for k in range(n)]
    )
    problem = build_problem(
        park, horizon, prices, forecast, options=BuildOptions(carbon_price_per_t=60.0)
    )
    result = solve(problem, SolveOptions(time_limit_s=20))
    assert result.schedule is not None, result.status
    schedule = result.schedule
    state = EngineState(park, str(PARK))
    state.publish_schedule(
        computed_at=now - timedelta(hours=14),
        start=horizon.start,
        interval_min=15,
        status=result.status.value,
        asset_kw={a: schedule.power_of(a).tolist() for a in schedule.asset_ids},
        objective=result.objective,
        carbon_price_per_t=60.0,
    )
    envelope = build_envelope(problem).park
    base = envelope.baseline_kw
    state.publish_envelope(
        computed_at=now - timedelta(hours=14),
        start=horizon.start,
        interval_min=15,
        expected_kw=base.tolist(),
        min_kw=(base - envelope.sustained_down_kw[:, 0]).tolist(),
        max_kw=(base + envelope.sustained_up_kw[:, 0]).tolist(),
    )
    state.publish_prices(
        start=horizon.start,
        interval_min=15,
        price_per_mwh=prices.tolist(),
        kind="cleared",
        currency="CNY",
    )
    planned = schedule.park_kw
    quarter = timedelta(minutes=15)
    curves = [
        BidCurve(
            Interval(start, quarter),
            (
                BidStep(float(prices[k]) - 100, float(planned[k]) + 2000),
                BidStep(float(prices[k]) + 100, float(planned[k])),
                BidStep(1500, float(planned[k]) - 3000),
            ),
        )
        for k, start in enumerate(horizon.starts())
    ]
    event_start = horizon.start + timedelta(hours=14)
    offers = [DrOffer(Interval(event_start, timedelta(hours=2)), 4000.0, 1800.0)]
    state.publish_bids(now - timedelta(hours=24), curves, offers)
    state.publish_awards(
        Award(Interval(start, quarter), float(planned[k]), float(prices[k]), "cn_provincial_spot")
        for k, start in enumerate(horizon.starts())
    )
    state.publish_dr_event(
        DrEvent("dr-0715-1", "cn_peak_valley_dr", event_start, event_start + timedelta(hours=2),
                now - timedelta(hours=1), 4000.0, 1800.0)
    )  # fmt: skip
    earlier = horizon.start - timedelta(days=1) + timedelta(hours=19)
    state.publish_dr_event(
        DrEvent("dr-0714-1", "cn_peak_valley_dr", earlier, earlier + timedelta(hours=1),
                earlier - timedelta(days=1), 3000.0, 1800.0)
    )  # fmt: skip
    enterprises = [e.id for e in park.enterprises]
    state.publish_settlements(
        SettlementLine(e, "dr-0714-1", earlier, earlier + timedelta(hours=1), 1000.0 + 100 * i,
                       700.0 + 90 * i, 300.0 + 10 * i, 330.0, 540.0 + 18 * i, 8.0 * (i % 3 == 0), "CNY")
        for i, e in enumerate(enterprises)
    )  # fmt: skip
    # Carbon over the day so far, from metered-like series; telemetry of "now" from the same.
    metered = estimate_metered(park, local_day_horizon(DAY, park.timezone, quarter))
    indicators = load_indicators(ROOT / "config" / "indicators.yaml")
    factor = grid_factor(park.carbon, PARK.parent, park.timezone)
    account = carbon_account(park, metered, factor, indicators)
    state.publish_carbon(now, account, daily_trend(account.park, metered.horizon, park.timezone))
    k_now = horizon.index_of(now)
    fleet.accept(
        "sim",
        [
            Measurement(a, now - timedelta(seconds=1), float(schedule.power_of(a)[k_now]))
            for a in schedule.asset_ids
        ],
    )
    measured = float(planned[k_now])
    for step in range(300):  # the last ten minutes of control cycles
        at = now - timedelta(seconds=2 * (300 - step))
        wobble = 150.0 * np.sin(step / 9.0)
        state.publish_control(ControlCycleView(at, measured, measured + wobble, 60, 2, 0.006))
    actions = StateActions(state, clock.now, PARK)
    return state, fleet, clock, actions


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,2000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium never looks for (or downloads) a driver of its own.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _js(driver: webdriver.Chrome, script: str) -> Any:
    return driver.execute_script(script)


def _drive(driver: webdriver.Chrome, url: str, enterprise_ids: list[str]) -> dict[str, Any]:
    driver.get(url)
    wait = WebDriverWait(driver, 20)
    wait.until(
        lambda d: _js(
            d, "return Number(document.getElementById('chart-bids').dataset.plotted || 0) > 0"
        )
    )
    wait.until(
        lambda d: _js(d, "return document.querySelectorAll('#carbon-table tbody tr').length > 0")
    )
    seen: dict[str, Any] = {
        "fleet_rows": [r.get_attribute("data-enterprise") for r in driver.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr")],
        "series": _js(driver, "return Object.fromEntries([...document.querySelectorAll('[data-series]')].map(e => [e.closest('[data-chart]')?.dataset.chart + ':' + e.dataset.series, Number(e.dataset.count)]))"),
        "gauges": _js(driver, "return [...document.querySelectorAll('.gauge svg')].map(s => [s.dataset.value, s.dataset.threshold])"),
        "dr_rows": len(driver.find_elements(By.CSS_SELECTOR, "#dr-table tbody tr")),
        "settlement_rows": len(driver.find_elements(By.CSS_SELECTOR, "#settlement-table tbody tr")),
        "carbon_rows": [r.get_attribute("data-enterprise") for r in driver.find_elements(By.CSS_SELECTOR, "#carbon-table tbody tr")],
        "title": driver.find_element(By.ID, "park-name").text,
        "login_hidden": _js(driver, "return document.getElementById('login').hidden"),
        "error_hidden": _js(driver, "return document.getElementById('error-bar').hidden"),
        "logs": driver.get_log("browser"),  # type: ignore[no-untyped-call]
    }  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    assert enterprise_ids
    return seen


async def test_dashboard_shows_the_demo_park(browser: webdriver.Chrome) -> None:
    state, fleet, _clock, actions = demo_state()
    tokens = TokenStore.parse(f"{VIEWER}:viewer")
    app = create_app(state, fleet, Metrics(), tokens, actions)
    enterprise_ids = [e.id for e in state.park.enterprises]
    async with serve(app, "127.0.0.1:0") as (host, port):
        url = f"http://{host}:{port}/#token={VIEWER}"
        seen = await asyncio.to_thread(_drive, browser, url, enterprise_ids)

    severe = [entry for entry in seen["logs"] if entry["level"] == "SEVERE"]
    assert severe == []
    assert seen["title"] == state.park.name
    assert seen["login_hidden"] is True
    assert seen["error_hidden"] is True
    assert seen["fleet_rows"] == enterprise_ids
    n = 96
    series = seen["series"]
    assert series["power:envelope"] == n
    assert series["power:schedule"] == n
    assert series["power:target"] == n
    assert series["power:measured"] == 300
    assert series["bids:price"] == n
    assert series["bids:bid"] == n
    assert series["bids:award"] == n
    assert series["trend:intensity"] == 1
    intensity, clean = seen["gauges"]
    assert float(intensity[1]) == pytest.approx(0.2)
    assert float(clean[1]) == pytest.approx(90.0)
    assert state.carbon is not None
    expected_intensity = state.carbon.account.indicators.carbon_intensity_t_per_tce
    assert float(intensity[0]) == pytest.approx(expected_intensity)
    assert seen["dr_rows"] == 2
    assert seen["settlement_rows"] == len(enterprise_ids)
    assert seen["carbon_rows"] == [*enterprise_ids, "park"]
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
