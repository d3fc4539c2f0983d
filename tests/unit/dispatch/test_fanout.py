"""A decomposed dispatch plans the same whether its parts run on threads here or as Dask actors
on the worker processes of a real local cluster (on loopback)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from distributed import Client, LocalCluster, Worker
from pydantic import ValidationError

from bench.reference import day_horizon, scenario
from dispatch import fanout
from dispatch.fanout import FanOutError
from dispatch.fast import Decomposed
from dispatch.forecast import forecast_park
from dispatch.problem import DispatchProblem, build_problem
from dispatch.solve import Method, Result, SolveOptions, Status, solve
from market.prices import synthetic_prices
from vpp.config.schema import EngineSettings

OPTIONS = SolveOptions(method=Method.DECOMPOSED, chunk_assets=50, time_limit_s=100.0)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield client


@pytest.fixture(scope="module")
def problem() -> DispatchProblem:
    """200 assets in four parts, with curtailment runs and the synthetic park's binding
    import limit: the parts must share the limit out, so every coordination pass runs."""
    park = scenario(200, seed=3)
    horizon = day_horizon(park)
    prices = synthetic_prices(horizon, seed=3)
    return build_problem(park, horizon, prices, forecast_park(park, horizon))


def actors_per_worker(client: Client) -> list[int]:
    def count(dask_worker: Worker) -> int:
        return len(dask_worker.state.actors)

    held = client.run(count)
    return sorted(held.values())


def released(client: Client) -> list[int]:
    """Actors per worker once the releases have reached them (they travel on their own)."""
    deadline = time.monotonic() + 10.0
    while (held := actors_per_worker(client)) != [0, 0] and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


def assert_same_plan(dask: Result, threads: Result) -> None:
    assert dask.status is threads.status
    assert dask.objective is not None
    assert threads.objective is not None
    assert dask.objective == pytest.approx(threads.objective, rel=1e-6)
    assert dask.stats.lower_bound == pytest.approx(threads.stats.lower_bound, rel=1e-6)
    assert dask.schedule is not None
    assert threads.schedule is not None
    assert dask.schedule.asset_ids == threads.schedule.asset_ids
    np.testing.assert_allclose(dask.schedule.power_kw, threads.schedule.power_kw, atol=1e-6)
    assert dask.schedule.soc_kwh.keys() == threads.schedule.soc_kwh.keys()
    for asset, soc in threads.schedule.soc_kwh.items():
        np.testing.assert_allclose(dask.schedule.soc_kwh[asset], soc, atol=1e-6)


def test_dask_actors_plan_as_threads_do_and_again_at_new_prices(
    client: Client, problem: DispatchProblem
) -> None:
    here = Decomposed(problem, OPTIONS)
    there = Decomposed(problem, OPTIONS, client=client)
    threads, dask = here.solve(), there.solve()
    assert threads.status is Status.FEASIBLE  # shared out: optimality not proven
    assert there.shared  # the limit bound: the shares and the priced pass ran
    assert there.mu is not None
    assert threads.schedule is not None
    assert threads.schedule.park_kw.max() <= problem.park_import_limit_kw + 1e-4
    assert_same_plan(dask, threads)
    assert actors_per_worker(client) == [2, 2]  # each worker keeps two parts' models

    new_prices = synthetic_prices(problem.horizon, seed=30)
    threads_again, dask_again = here.resolve(new_prices), there.resolve(new_prices)
    assert dask_again.objective != pytest.approx(dask.objective, rel=1e-3)
    assert_same_plan(dask_again, threads_again)

    there.close()
    here.close()
    assert released(client) == [0, 0]


def test_a_scheduler_address_in_the_options_fans_out_over_its_workers(
    client: Client, problem: DispatchProblem
) -> None:
    address = client.scheduler.address if client.scheduler else ""
    try:
        dask = solve(problem, replace(OPTIONS, dask_scheduler=address))
    finally:
        fanout.close_dask_clients()
    assert_same_plan(dask, solve(problem, OPTIONS))
    assert dask.stats.subproblems == 4
    assert released(client) == [0, 0]  # once the solve is done


def test_an_unreachable_scheduler_is_one_clear_error(
    problem: DispatchProblem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(FanOutError, match=r"^dispatch scheduler tcp://127\.0\.0\.1:9: cannot"):
        solve(problem, replace(OPTIONS, dask_scheduler="tcp://127.0.0.1:9"))


def test_the_engine_settings_carry_the_scheduler_address() -> None:
    assert SolveOptions.from_engine(EngineSettings()).dask_scheduler is None
    settings = EngineSettings(dispatch_scheduler="tcp://10.0.0.5:8786")
    assert SolveOptions.from_engine(settings).dask_scheduler == "tcp://10.0.0.5:8786"
    assert EngineSettings(dispatch_scheduler="tls://[fd00::5]:8786").dispatch_scheduler
    for wrong in ("10.0.0.5:8786", "tcp://10.0.0.5", "http://10.0.0.5:8786", "tcp://h:99999"):
        with pytest.raises(ValidationError, match="dispatch_scheduler"):
            EngineSettings(dispatch_scheduler=wrong)
