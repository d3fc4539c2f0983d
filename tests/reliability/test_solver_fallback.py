"""An infeasible or timed-out plan: the fallback is used, logged and counted, nothing breaks.

Infeasible: a replan of the small park with enterprise A's connection cut to 200 kW, below
what its process load draws at peak even fully curtailed. Timeout: the day-ahead plan of
the demo park with a 1 ms solver limit, which ends before HiGHS has any schedule. In both
cases the planner publishes no schedule and submits nothing, counts
`vpp_solver_runs_total{problem,status}` and `vpp_schedule_fallbacks_total{reason}`, logs one
error naming the cause, and the control loop finds no target: every asset stays on local
control (no setpoint is sent).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, date, datetime

import pytest

from tests.reliability.conftest import MARKETS, ROOT, SMALL_PARK
from vpp.clock import ManualClock
from vpp.config import LoadedConfig, load_park
from vpp.control import Controller
from vpp.fleet import Fleet
from vpp.metrics import Metrics
from vpp.planner import Planner, PriceSource
from vpp.state import EngineState
from vpp.targets import TargetBook

DAY = date(2026, 7, 15)
NOW = datetime(2026, 7, 14, 20, 0, tzinfo=UTC)  # 04:00 in Shanghai, the delivery day


def with_connection_limit(
    loaded: LoadedConfig, enterprise_id: str, limit_kw: float
) -> LoadedConfig:
    enterprises = [
        e.model_copy(update={"connection_limit_kw": limit_kw}) if e.id == enterprise_id else e
        for e in loaded.park.enterprises
    ]
    park = loaded.park.model_copy(update={"enterprises": enterprises})
    return dataclasses.replace(loaded, park=park)


def with_time_limit(loaded: LoadedConfig, seconds: float) -> LoadedConfig:
    engine = loaded.park.engine.model_copy(update={"solver_time_limit_s": seconds})
    return dataclasses.replace(loaded, park=loaded.park.model_copy(update={"engine": engine}))


async def plan_with_fallback(
    loaded: LoadedConfig, caplog: pytest.LogCaptureFixture, *, day_ahead: bool
) -> tuple[Planner, Metrics, list[str], Controller]:
    clock = ManualClock(NOW)
    metrics = Metrics()
    fleet = Fleet(loaded.park, clock, metrics=metrics)
    targets = TargetBook()
    state = EngineState(loaded.park, str(loaded.path))
    lines: list[str] = []
    planner = Planner(
        loaded, clock, fleet, targets, state, metrics, PriceSource(seed=3), report=lines.append
    )
    controller = Controller(loaded.park, fleet, {}, clock, metrics, targets)
    with caplog.at_level(logging.ERROR, logger="vpp.planner"):
        plan = await planner.plan_and_commit(DAY, day_ahead=day_ahead)
    assert plan is not None
    # no schedule and nothing submitted: the park was not committed to anything
    assert plan.result.schedule is None
    assert state.schedule is None and state.award_list() == [] and state.dr_event_list() == []
    assert DAY not in planner.planned_days
    # the control loop has no target: it sends nothing, the assets stay on local control
    report = controller.cycle()
    assert report.target_kw is None and report.setpoints == 0
    return planner, metrics, lines, controller


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_an_infeasible_plan_is_a_logged_and_counted_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loaded = with_connection_limit(load_park(SMALL_PARK, MARKETS), "ent-a", 200.0)
    # a replan of the rest of the day (no bids to build: the fallback is the same)
    planner, metrics, lines, _ = await plan_with_fallback(loaded, caplog, day_ahead=False)
    assert planner.last_plan is not None
    diagnosis = planner.last_plan.result.diagnosis
    assert diagnosis is not None
    assert any(
        v.subject == "ent-a" and v.kind.value == "enterprise_import_limit" for v in diagnosis.hard
    )
    labels = {"problem": "replan", "status": "infeasible"}
    assert sample(metrics, "vpp_solver_runs_total", **labels) == 1.0
    assert sample(metrics, "vpp_schedule_fallbacks_total", reason="infeasible") == 1.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "infeasible" in errors[0] and "local control" in errors[0]
    assert "ent-a: enterprise_import_limit" in errors[0]
    assert lines == [f"plan for {DAY}: infeasible — no schedule, assets stay on local control"]


@pytest.mark.slow
async def test_a_solver_timeout_without_a_schedule_is_a_logged_and_counted_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loaded = with_time_limit(load_park(ROOT / "config/park.yaml", MARKETS), 0.001)
    planner, metrics, lines, _ = await plan_with_fallback(loaded, caplog, day_ahead=True)
    assert planner.last_plan is not None
    result = planner.last_plan.result
    assert (result.status.value, result.termination.value) == ("no_solution", "time_limit")
    labels = {"problem": "day_ahead", "status": "no_solution"}
    assert sample(metrics, "vpp_solver_runs_total", **labels) == 1.0
    assert sample(metrics, "vpp_schedule_fallbacks_total", reason="no_solution") == 1.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "no_solution" in errors[0]
    assert lines == [f"plan for {DAY}: no_solution — no schedule, assets stay on local control"]
    # the solver stopped at its limit, not at the end of a full solve
    assert result.stats.solver_s < 5.0


async def test_an_unreachable_dispatch_cluster_plans_on_the_engines_own_threads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A park large enough to decompose whose Dask scheduler does not answer: the plan is
    made on the engine's threads, the error logged once and counted."""
    from bench.reference import scenario

    small = load_park(SMALL_PARK, MARKETS)
    park = scenario(450, seed=2)  # above 400 assets: decomposed, so the cluster is asked
    engine = park.engine.model_copy(
        update={"dispatch_scheduler": "tcp://127.0.0.1:9", "solver_time_limit_s": 120.0}
    )
    loaded = dataclasses.replace(small, park=park.model_copy(update={"engine": engine}))
    clock = ManualClock(NOW)
    metrics = Metrics()
    fleet = Fleet(loaded.park, clock, metrics=metrics)
    state = EngineState(loaded.park, str(loaded.path))
    planner = Planner(loaded, clock, fleet, TargetBook(), state, metrics, PriceSource(seed=3))
    with caplog.at_level(logging.ERROR, logger="vpp.planner"):
        plan = await planner.plan_and_commit(DAY, day_ahead=False)
    assert plan is not None and plan.result.ok
    assert plan.result.stats.method == "decomposed"
    assert state.schedule is not None
    assert sample(metrics, "vpp_schedule_fallbacks_total", reason="dispatch_cluster") == 1.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "tcp://127.0.0.1:9" in errors[0]
