"""The benchmark's synthetic park and its monolithic reference: one Pyomo model of everything.

`scenario(n, seed)` builds a park of `n` assets in enterprises of 25 (12 batteries, 12
curtailable process loads, one PV array each) with a binding park import limit. `reference`
solves the whole problem as one Pyomo model with HiGHS — the straightforward way — relaxed to a
linear program (its curtailment runs are binaries, and the MIP of a park this size does not
close in minutes): a lower bound to check the fast path's objective against. Imported by
`bench/dispatch.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from dispatch.model import build_model
from dispatch.problem import DispatchProblem
from dispatch.series import Horizon
from vpp.config.schema import Park

ASSETS_PER_ENTERPRISE = 25
BATTERIES_PER_ENTERPRISE = 12
LOADS_PER_ENTERPRISE = 12

_SHAPE = np.array(
    [0.55, 0.52, 0.5, 0.5, 0.52, 0.6, 0.75, 0.9, 1.0, 1.0, 0.98, 0.95,
     0.85, 0.95, 1.0, 1.0, 0.97, 0.9, 0.8, 0.72, 0.66, 0.62, 0.6, 0.57]
)  # fmt: skip


def scenario(n_assets: int, seed: int = 1) -> Park:
    """A park of `n_assets` assets. Beyond 1,000 assets they are smaller (a park's grid
    connection stays within the schema's 500 MW), which changes no model's size."""
    rng = np.random.default_rng(seed)
    size_kw = min(1.0, 1000.0 / max(n_assets, 1))
    enterprises: list[dict[str, Any]] = []
    n_enterprises = max(1, -(-n_assets // ASSETS_PER_ENTERPRISE))
    park_peak = park_charge = park_pv = 0.0
    left = n_assets
    for e in range(n_enterprises):
        size = min(ASSETS_PER_ENTERPRISE, left)
        left -= size
        n_bat = min(BATTERIES_PER_ENTERPRISE, size // 2)
        n_pv = 1 if size > n_bat + 1 else 0
        n_load = size - n_bat - n_pv
        assets: list[dict[str, Any]] = []
        peak = charge = 0.0
        for b in range(n_bat):
            power = float(rng.uniform(50, 500)) * size_kw
            charge += power
            assets.append(
                {
                    "id": f"e{e}-bat{b}",
                    "kind": "battery",
                    "power_kw": round(power, 2),
                    "capacity_kwh": round(power * float(rng.choice([1.0, 2.0, 4.0])), 2),
                    "soc_initial": round(float(rng.uniform(0.2, 0.8)), 3),
                    "charge_efficiency": round(float(rng.uniform(0.92, 0.97)), 3),
                    "discharge_efficiency": round(float(rng.uniform(0.92, 0.97)), 3),
                    "degradation_cost_per_mwh": round(float(rng.uniform(5, 40)), 1),
                }
            )
        for k in range(n_load):
            top = float(rng.uniform(100, 800)) * size_kw
            profile = top * _SHAPE * rng.uniform(0.93, 1.07, 24)
            peak += float(profile.max())
            assets.append(
                {
                    "id": f"e{e}-load{k}",
                    "kind": "curtailable_load",
                    "profile": {"weekday_kw": [round(float(v), 2) for v in profile]},
                    "max_reduction_kw": round(float(profile.min() * rng.uniform(0.1, 0.4)), 2),
                    "max_duration_min": float(rng.choice([60, 120, 240])),
                    "min_rest_min": float(rng.choice([0, 60])),
                    "rebound_fraction": float(rng.choice([0.0, 0.3, 0.6])),
                    "rebound_window_min": float(rng.choice([60, 120])),
                    "cost_per_mwh": round(float(rng.uniform(150, 600)), 1),
                }
            )
        pv = 0.0
        if n_pv:
            pv = float(rng.uniform(0.3, 0.8)) * peak
            assets.append(
                {
                    "id": f"e{e}-pv",
                    "kind": "pv",
                    "capacity_kwp": round(pv, 1),
                    "curtailment_cost_per_mwh": round(float(rng.uniform(0, 100)), 1),
                }
            )
        park_peak += peak
        park_charge += charge
        park_pv += pv
        enterprises.append(
            {
                "id": f"e{e}",
                "name": f"Enterprise {e}",
                "connection_limit_kw": round(peak + 0.8 * charge + 1.0, 1),
                "export_limit_kw": round(0.5 * pv, 1),
                "assets": assets,
            }
        )
    return Park.model_validate(
        {
            "id": f"bench-{n_assets}",
            "name": f"Benchmark park, {n_assets} assets",
            "location": {"latitude_deg": 31.3, "longitude_deg": 120.6},
            # Binds when cheap night hours invite every battery to charge at once.
            "grid_import_limit_kw": round(0.75 * park_peak + 0.3 * park_charge, 1),
            "grid_export_limit_kw": round(0.2 * park_pv, 1),
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": enterprises,
        }
    )


def day_horizon(park: Park) -> Horizon:
    """A working day in the park's time zone, 96 quarter-hours."""
    return Horizon(datetime(2025, 6, 4, tzinfo=park.tz), timedelta(minutes=15), 96)


@dataclass(frozen=True, slots=True)
class Reference:
    objective: float | None
    build_s: float
    highs_s: float
    status: str


def reference(problem: DispatchProblem, time_limit_s: float = 600.0) -> Reference:
    """Solve the whole problem's LP relaxation as one Pyomo model with HiGHS."""
    import pyomo.environ as pyo
    from pyomo.contrib.appsi.base import TerminationCondition
    from pyomo.contrib.appsi.solvers.highs import Highs

    started = time.perf_counter()
    model = build_model(problem)
    pyo.TransformationFactory("core.relax_integer_vars").apply_to(model)
    built = time.perf_counter()
    solver = Highs()
    solver.highs_options = {"threads": 1}  # as every other model: HiGHS's scheduler is shared
    solver.config.time_limit = time_limit_s
    solver.config.mip_gap = 1e-6
    solver.config.load_solution = False
    result = solver.solve(model)
    done = time.perf_counter()
    optimal = result.termination_condition is TerminationCondition.optimal
    objective = result.best_feasible_objective if optimal else None
    return Reference(
        objective=None if objective is None else float(objective),
        build_s=built - started,
        highs_s=done - built,
        status=str(result.termination_condition.name),
    )
