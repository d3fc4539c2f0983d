"""The engine starts its adapters and loops, keeps fleet state, and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.sim import SimAdapter
from vpp.clock import AcceleratedClock
from vpp.config import load_park
from vpp.engine import Engine

ROOT = Path(__file__).resolve().parents[3]
SMALL = ROOT / "tests/fixtures/small_park.yaml"
MARKETS = ROOT / "config/markets"
START = datetime(2026, 7, 15, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai: PV and loads are up


def make_engine(speed: float = 600.0) -> Engine:
    loaded = load_park(SMALL, MARKETS)
    clock = AcceleratedClock(START, speed)
    return Engine(
        loaded, clock, [SimAdapter.from_park(loaded.park, clock, seed=1)], report_every_s=30
    )


async def test_runs_for_a_duration_and_summarises() -> None:
    engine = make_engine(speed=120.0)
    lines: list[str] = []
    engine._report = lines.append
    summary = await asyncio.wait_for(engine.run(duration_s=120), timeout=10)
    assert summary.reason == "duration reached"
    # 7 assets, a reading every 2 s of clock time; leave room for a loaded machine
    assert summary.readings_accepted >= 7 * 30
    assert summary.readings_rejected == 0
    assert summary.park.available == summary.park.assets == 7
    assert set(summary.enterprises) == {"ent-a", "ent-b"}
    assert sum(a.power_kw for a in summary.enterprises.values()) == pytest.approx(
        summary.park.power_kw
    )
    assert (summary.ended_at - summary.started_at).total_seconds() >= 120
    assert lines
    assert "park" in lines[-1]
    assert "available" in lines[-1]
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []


async def test_stop_ends_every_task_promptly() -> None:
    engine = make_engine(speed=1.0)
    runner = asyncio.create_task(engine.run())
    await asyncio.sleep(0.3)
    assert not runner.done()
    started = time.monotonic()
    engine.stop("test asked")
    summary = await asyncio.wait_for(runner, timeout=5)
    assert time.monotonic() - started < 2
    assert summary.reason == "test asked"
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_metrics_follow_the_fleet() -> None:
    engine = make_engine()
    await engine.run(duration_s=30)
    metrics = engine.metrics
    assert metrics.telemetry_received.labels("sim")._value.get() == engine.fleet.accepted
    assert metrics.assets.labels("available")._value.get() == 7
    assert metrics.adapter_connected.labels("sim")._value.get() == 1.0


def test_an_asset_served_twice_is_refused() -> None:
    loaded = load_park(SMALL, MARKETS)
    clock = AcceleratedClock(START, 1.0)
    adapter = SimAdapter.from_park(loaded.park, clock)
    twin = SimAdapter.from_park(loaded.park, clock)
    twin.name = "sim-2"
    with pytest.raises(ValueError, match="served by both"):
        Engine(loaded, clock, [adapter, twin])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_vpp_run_stops_cleanly_on_signal(sig: signal.Signals, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "vpp.cli",
        "run",
        "--config",
        str(SMALL),
        "--markets",
        str(MARKETS),
        "--speed",
        "60",
        "--no-plan",
        "--listen",
        "127.0.0.1:0",
        "--store",
        f"sqlite:///{tmp_path / 'run.db'}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline() for _ in range(2)]
            assert lines[0].startswith("API and dashboard: http://127.0.0.1:")
            assert "park" in lines[1]  # the first status line: the engine is running
            process.send_signal(sig)
            out, err = process.communicate(timeout=20)
        finally:
            process.kill()
    assert process.returncode == 0, err
    assert f"run ended (signal {sig.name})" in out
    assert "Traceback" not in err


def test_demo_command_ends_by_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vpp.cli", "demo", "--wall-seconds", "3", "--speed", "600"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "run ended (duration reached)" in result.stdout
    assert "available 71/71" in result.stdout
