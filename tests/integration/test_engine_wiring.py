"""The whole engine on the small park: plan, bid, clear, follow, audit, serve, store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from adapters.factory import build_adapters
from dispatch.bids import BidOptions
from vpp.api import TokenStore
from vpp.clock import AcceleratedClock
from vpp.config import load_park
from vpp.domain import Award, DrEvent, Interval
from vpp.engine import Engine, EngineOptions
from vpp.planner import PriceSource, day_horizon, plan_day
from vpp.store import Store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "tests/fixtures/small_park.yaml"
MARKETS = ROOT / "config/markets"
DAY = date(2026, 7, 15)


async def test_engine_plans_bids_follows_audits_and_serves(tmp_path: Path) -> None:
    loaded = load_park(SMALL, MARKETS)
    park = loaded.park
    prices = PriceSource(seed=3)
    horizon = day_horizon(DAY, loaded)
    plan = plan_day(
        loaded, horizon, prices.on(horizon), bid_options=BidOptions(relative_offsets=(-0.5, 0.5))
    )
    assert plan.result.ok
    assert len(plan.bid_curves) == horizon.intervals

    start = datetime.combine(DAY, datetime.min.time(), tzinfo=park.tz) + timedelta(hours=10)
    clock = AcceleratedClock(start, 300.0)
    store = Store(f"sqlite:///{tmp_path / 'engine.db'}")
    store.migrate()
    tokens = TokenStore.parse("operator-secret-0123456789:operator")
    options = EngineOptions(
        prices=prices,
        plan_today=False,
        plan_next_days=False,
        serve_api=True,
        listen="127.0.0.1:0",
        tokens=tokens,
        store=store,
    )
    lines: list[str] = []
    engine = Engine(
        loaded, clock, build_adapters(park, clock, seed=2), options=options, report=lines.append
    )
    assert engine.planner is not None
    engine.planner.commit(plan, DAY, day_ahead=True)
    assert engine.targets.award_at(start) is not None  # the simulated market cleared the day

    runner = engine.run(duration_s=40 * 60)
    summary = await runner
    store.close()

    assert summary.reason == "duration reached"
    assert summary.setpoints_sent > 0
    assert summary.setpoints_acked > 0
    finished = [t for t in summary.intervals if t.target_kwh is not None]
    assert len(finished) >= 2  # at least two whole market intervals were followed and judged
    assert any(line.startswith("API and dashboard: http://127.0.0.1:") for line in lines)
    assert any(line.startswith("market: 96 intervals awarded") for line in lines)

    db = sqlite3.connect(tmp_path / "engine.db")
    awards = db.execute("SELECT COUNT(*) FROM awards").fetchone()[0]
    audited, acked = db.execute("SELECT COUNT(*), SUM(acked) FROM setpoint_audit").fetchone()
    telemetry = db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
    schedules = db.execute("SELECT COUNT(*) FROM schedules").fetchone()[0]
    bids = db.execute("SELECT market, payload FROM bids").fetchall()
    db.close()
    assert awards == 96
    assert audited == summary.setpoints_sent  # every setpoint that left is in the audit log
    assert acked == summary.setpoints_acked
    assert telemetry == summary.readings_accepted  # nothing accepted was lost on the way to disk
    assert schedules == 1
    spot = [json.loads(payload) for market, payload in bids if market == loaded.spot.id]
    assert len(spot) == 1
    assert len(spot[0]["bid_curves"]) == 96  # the curves as submitted, not a summary


OPERATOR = "op-token-0123456789abcdef"


def api_engine() -> tuple[Engine, datetime]:
    """The small park's engine serving its API on a free port (token OPERATOR), on a clock
    60 times fast from 11:00 of DAY; and that start."""
    loaded = load_park(SMALL, MARKETS)
    park = loaded.park
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=park.tz) + timedelta(hours=11)
    clock = AcceleratedClock(start, 60.0)
    options = EngineOptions(
        serve_api=True, listen="127.0.0.1:0", tokens=TokenStore.parse(f"{OPERATOR}:operator")
    )
    return Engine(loaded, clock, build_adapters(park, clock), options=options), start


async def test_api_serves_live_state_while_running(tmp_path: Path) -> None:
    engine, _ = api_engine()
    task = asyncio.create_task(engine.run())
    try:
        for _ in range(100):
            if engine.address is not None and engine.fleet.aggregate().available == 7:
                break
            await asyncio.sleep(0.05)
        assert engine.address is not None
        host, port = engine.address
        headers = {"Authorization": f"Bearer {OPERATOR}"}
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.get("/api/v1/park", headers=headers) as response:
                assert response.status == 200
                body = await response.json()
            async with http.get("/api/v1/park") as response:
                assert response.status == 401
            async with http.get("/metrics") as response:
                text = await response.text()
            async with http.get("/") as response:
                assert response.status == 200
                assert "<html" in (await response.text()).lower()
        assert body["id"] == "small"
        assert "vpp_telemetry_received_total" in text
    finally:
        engine.stop()
        await task


async def test_park_endpoint_shows_the_target_the_loop_follows_during_a_dr_event() -> None:
    engine, start = api_engine()
    day_start = start - timedelta(hours=11)
    # A schedule and a DR event in force, entered as the planner enters them: into the
    # control loop's target book and into the API's read model.
    quarter = timedelta(minutes=15)
    engine.targets.set_schedule(day_start, quarter, [900.0] * 96)
    engine.state.publish_schedule(
        computed_at=start, start=day_start, interval_min=15, status="optimal", asset_kw={},
        park_kw=[900.0] * 96,
    )  # fmt: skip
    event = DrEvent(
        "evt-noon", "cn_peak_valley_dr", start - timedelta(hours=1), start + timedelta(hours=2),
        start - timedelta(hours=3), 250.0, 1200.0,
    )  # fmt: skip
    engine.targets.add_event(event)
    engine.state.publish_dr_event(event)
    task = asyncio.create_task(engine.run())
    try:
        for _ in range(200):
            if engine.address is not None and engine.state.control is not None:
                break
            await asyncio.sleep(0.05)
        assert engine.address is not None and engine.state.control is not None
        host, port = engine.address
        headers = {"Authorization": f"Bearer {OPERATOR}"}
        async with (
            aiohttp.ClientSession(f"http://{host}:{port}") as http,
            http.get("/api/v1/park", headers=headers) as response,
        ):
            assert response.status == 200
            body = await response.json()
        in_force = engine.targets.target_at(engine.clock.now())
        report = engine.controller.last_report if engine.controller is not None else None
    finally:
        engine.stop()
        await task
    assert in_force is not None and in_force.power_kw == pytest.approx(900.0 - 250.0)
    assert report is not None and report.target_kw == pytest.approx(in_force.power_kw)
    assert body["target_kw"] == pytest.approx(in_force.power_kw)


async def test_restored_awards_keep_the_notice_they_were_received_with(tmp_path: Path) -> None:
    """After a restart, an award's notice counts from when it was received, not from the
    restart: assets that need notice take part in awards received long before."""
    loaded = load_park(SMALL, MARKETS)
    park = loaded.park
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=park.tz) + timedelta(hours=10)
    received = start - timedelta(hours=14)  # the day-ahead clearing, the evening before
    store = Store(f"sqlite:///{tmp_path / 'engine.db'}")
    store.migrate()
    interval = timedelta(minutes=15)
    day_start = start - timedelta(hours=10)
    store.save_schedule(received, day_start, interval, "optimal", 0.0, {"power_kw": [[100.0] * 96]})
    awards = [
        Award(Interval(day_start + k * interval, interval), 250.0, 400.0, loaded.spot.id)
        for k in range(96)
    ]
    store.save_awards(awards, received)
    clock = AcceleratedClock(start, 60.0)
    options = EngineOptions(
        prices=PriceSource(seed=3), plan_today=False, plan_next_days=False, store=store
    )
    engine = Engine(loaded, clock, build_adapters(park, clock, seed=2), options=options)
    await engine.run(duration_s=60)
    store.close()

    target = engine.targets.target_at(start + timedelta(minutes=1))
    assert target is not None
    assert target.power_kw == 250.0 and target.baseline_kw == 100.0
    assert target.notice_min == pytest.approx(14 * 60 + 1, abs=0.5)


async def test_a_restarted_engine_shows_the_last_plan_until_it_plans_again(tmp_path: Path) -> None:
    loaded = load_park(SMALL, MARKETS)
    park = loaded.park
    prices = PriceSource(seed=3)
    horizon = day_horizon(DAY, loaded)
    plan = plan_day(loaded, horizon, prices.on(horizon))
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=park.tz) + timedelta(hours=10)
    store = Store(f"sqlite:///{tmp_path / 'engine.db'}")
    store.migrate()

    def engine() -> Engine:
        clock = AcceleratedClock(start, 60.0)
        options = EngineOptions(prices=prices, plan_today=False, plan_next_days=False, store=store)
        return Engine(loaded, clock, build_adapters(park, clock, seed=2), options=options)

    before = engine()
    assert before.planner is not None
    before.planner.commit(plan, DAY, day_ahead=True)
    after = engine()
    assert after.state.schedule is None and after.state.envelope is None
    await after.run(duration_s=60)
    store.close()

    shown, planned = after.state.schedule, before.state.schedule
    assert shown is not None and planned is not None
    assert shown.start == planned.start and shown.status == planned.status
    assert shown.park_kw == pytest.approx(planned.park_kw, abs=0.01)
    assert shown.asset_kw.keys() == planned.asset_kw.keys()
    assert after.state.envelope is not None and before.state.envelope is not None
    assert after.state.envelope.max_kw == pytest.approx(before.state.envelope.max_kw)
    assert after.state.prices is not None and before.state.prices is not None
    assert after.state.prices.price_per_mwh == pytest.approx(before.state.prices.price_per_mwh)
