"""`kill -9` of a running engine, then a restart on the same store: nothing acknowledged is lost.

The engine (`python -m vpp.cli run` on the small park, clock 60x) plans the day, clears it
on the simulated market and follows the awards with acknowledged setpoints. The test reads
the store while the engine runs (SQLite read-only, or the loopback PostgreSQL in a private
schema), kills the process with SIGKILL, checks that every award, acknowledged setpoint and
reading seen before the kill is still stored unchanged, restarts the engine on the same store
at the clock time the first run reached, and checks from the log, the store and the API that
it restored the awards in force and steers the park to them without bidding the day again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.postgres import postgres_reachable, private_schema
from tests.reliability.conftest import MARKETS, ROOT, SMALL_PARK

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = "2026-07-15T10:00:00+08:00"  # a Wednesday morning: loads up, PV up, no day-ahead yet
SPEED = "60"
WAIT_S = 120.0  # wall seconds for a plan (about 10 s here) on a loaded machine
ACKED_BEFORE_KILL = 30
ACKED_AFTER_RESTART = 15


# --- reading the store from outside the engine -----------------------------------------------


class StoreReader:
    """Plain SQL against the engine's database, without going through the engine's code."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite:///"):
            path = self.url.removeprefix("sqlite:///")
            if not Path(path).exists():
                return []
            # read-only: the test must not take part in the engine's transactions
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                try:
                    return list(conn.execute(sql).fetchall())
                except sqlite3.OperationalError:  # schema not there yet
                    return []
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            try:
                return list(conn.execute(sql).fetchall())
            except psycopg.errors.UndefinedTable:
                return []

    def count(self, sql: str) -> int:
        rows = self.rows(sql)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0


AWARDS = "SELECT market, start_ms, length_s, power_kw, price_per_mwh, received_ms FROM awards"
ACKED = (
    "SELECT correlation_id, asset_id, power_kw, issued_ms, valid_until_ms, acked, "
    "applied_power_kw, ack_ms FROM setpoint_audit WHERE acked IS NOT NULL"
)
TELEMETRY = "SELECT asset_id, ts_ms, power_kw FROM telemetry"


# --- the engine as a process ------------------------------------------------------------------


class EngineProcess:
    """`python -m vpp.cli run` with its stdout collected line by line in a thread."""

    def __init__(self, store_url: str, start: str, log_dir: Path, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VPP_API")}
        env["PYTHONUNBUFFERED"] = "1"
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr = self.stderr_path.open("w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vpp.cli",
                "--log-level",
                "INFO",
                "run",
                "--config",
                str(SMALL_PARK),
                "--markets",
                str(MARKETS),
                "--speed",
                SPEED,
                "--start",
                start,
                "--store",
                store_url,
                "--listen",
                "127.0.0.1:0",
                "--report-every",
                "120",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    def find(self, pattern: str) -> tuple[float, re.Match[str]] | None:
        with self._lock:
            for at, line in self.lines:
                match = re.search(pattern, line)
                if match is not None:
                    return at, match
        return None

    def wait_for(self, pattern: str, timeout_s: float = WAIT_S) -> tuple[float, re.Match[str]]:
        found: tuple[float, re.Match[str]] | None = wait(
            lambda: self.find(pattern), timeout_s, self
        )
        assert found is not None
        return found

    def api(self, path: str) -> Any:
        found = self.find(r"API and dashboard: http://127\.0\.0\.1:(\d+)/")
        assert found is not None
        port = int(found[1].group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/json")
            return json.loads(response.read())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._finish()

    def _finish(self) -> None:
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if not self._stderr.closed:
            self._stderr.close()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._finish()
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._finish()

    def output(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines)


def wait(check: Callable[[], Any], timeout_s: float, engine: EngineProcess) -> Any:
    """Poll `check` until it returns something truthy; fail with the engine's output if not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if engine.process.poll() is not None:
            break
        time.sleep(0.2)
    stderr = engine.stderr_path.read_text()[-3000:]
    pytest.fail(f"gave up waiting; engine output:\n{engine.output()[-3000:]}\nstderr:\n{stderr}")


@dataclass(frozen=True, slots=True)
class Figures:
    first_awards_s: float
    acked_before_kill: int
    readings_before_kill: int
    restored_awards: int
    restore_s: float
    first_ack_after_restart_s: float


# --- the scenario -----------------------------------------------------------------------------


def crash_and_restart(store_url: str, log_dir: Path) -> Figures:
    reader = StoreReader(store_url)
    first = EngineProcess(store_url, START, log_dir, "first")
    try:
        # awards are committed and setpoints following them are acknowledged
        wait(lambda: reader.count("SELECT COUNT(*) FROM awards") >= 96, WAIT_S, first)
        first_awards_s = time.monotonic() - first.started
        awarded_from = reader.count("SELECT MIN(received_ms) FROM awards")
        acked_sql = (
            f"SELECT COUNT(*) FROM setpoint_audit WHERE acked = 1 AND issued_ms >= {awarded_from}"
        )
        wait(lambda: reader.count(acked_sql) >= ACKED_BEFORE_KILL, WAIT_S, first)
        awards = set(reader.rows(AWARDS))
        acked = set(reader.rows(ACKED))
        readings = set(reader.rows(TELEMETRY))
        first.kill()
    finally:
        first.close()

    # everything the store had acknowledged before the kill is there, unchanged
    assert acked and awards and readings
    assert acked <= set(reader.rows(ACKED))
    assert awards == set(reader.rows(AWARDS))
    assert readings <= set(reader.rows(TELEMETRY))

    # the clock goes on from where the first run got to
    resume_ms = reader.count("SELECT MAX(ts_ms) FROM telemetry")
    resume = datetime.fromtimestamp(resume_ms / 1000, UTC)
    known_ids = {row[0] for row in reader.rows("SELECT correlation_id FROM setpoint_audit")}
    second = EngineProcess(store_url, resume.isoformat(), log_dir, "second")
    try:
        restore_s, restored = second.wait_for(r"restored (\d+) awards and (\d+) DR events")
        in_window = [a for a in awards if resume_ms - 86_400_000 <= a[1] < resume_ms + 172_800_000]
        assert int(restored.group(1)) == len(in_window)
        new_acks = (
            "SELECT correlation_id, asset_id, power_kw, issued_ms FROM setpoint_audit "
            f"WHERE acked = 1 AND issued_ms >= {resume_ms}"
        )

        def acked_after_restart() -> list[tuple[Any, ...]]:
            rows = [r for r in reader.rows(new_acks) if r[0] not in known_ids]
            return rows if len(rows) >= ACKED_AFTER_RESTART else []

        wait(acked_after_restart, WAIT_S, second)
        first_ack_s = time.monotonic() - second.started

        # the API serves the restored awards and the control loop's target is the award in force
        served = second.api("/api/v1/awards")["awards"]
        assert len(served) == len(in_window)
        control = wait(lambda: second.api("/api/v1/control")["latest"], WAIT_S, second)
        at_ms = datetime.fromisoformat(control["at"]).timestamp() * 1000
        in_force = [a for a in awards if a[1] <= at_ms < a[1] + a[2] * 1000]
        assert len(in_force) == 1, control
        reduction = sum(
            r[0]
            for r in reader.rows(
                f"SELECT reduction_kw FROM dr_events WHERE opted_in = 1 "
                f"AND start_ms <= {at_ms} AND end_ms > {at_ms}"
            )
        )
        assert control["target_kw"] == pytest.approx(in_force[0][3] - reduction, abs=1e-6)
        # The day already cleared is not bid again: the planner goes on to the next day (or has
        # nothing to do when that was cleared too) and the stored awards are the same records.
        tomorrow_ms = datetime.fromisoformat("2026-07-16T00:00:00+08:00").timestamp() * 1000
        if not any(a[1] >= tomorrow_ms for a in awards):
            second.wait_for(r"plan for 2026-07-16 \(day-ahead\)")
        assert second.find(r"plan for 2026-07-15") is None
        assert set(reader.rows(AWARDS)) >= awards
        assert second.terminate() == 0
        assert "Traceback" not in second.stderr_path.read_text()
    finally:
        second.close()
    return Figures(
        first_awards_s=round(first_awards_s, 1),
        acked_before_kill=len(acked),
        readings_before_kill=len(readings),
        restored_awards=int(restored.group(1)),
        restore_s=round(restore_s, 2),
        first_ack_after_restart_s=round(first_ack_s, 2),
    )


def report(backend: str, figures: Figures) -> None:
    print(f"\ncrash recovery ({backend}): {figures}")


def test_kill_9_loses_nothing_acknowledged_and_resumes_the_awards_sqlite(tmp_path: Path) -> None:
    figures = crash_and_restart(f"sqlite:///{tmp_path / 'vpp.db'}", tmp_path)
    report("sqlite", figures)


if postgres_reachable():

    def test_kill_9_loses_nothing_acknowledged_and_resumes_the_awards_postgresql(
        tmp_path: Path,
    ) -> None:
        with private_schema() as url:
            figures = crash_and_restart(url, tmp_path)
        report("postgresql", figures)
