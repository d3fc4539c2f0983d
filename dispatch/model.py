"""The dispatch problem as a Pyomo model: one block per asset kind, coupled by connection limits.

This is where the asset physics is read. `dispatch.fast` writes the same model as arrays for
speed; `tests/unit/dispatch/test_equivalence.py` holds both to the same optimum. Units: kW,
kWh, °C, currency; an interval lasts h hours; energy costs are price × kW × h / 1000.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.appsi.base import TerminationCondition
from pyomo.contrib.appsi.solvers.highs import Highs

from dispatch.fast import (  # importing it also creates the first HiGHS instance quietly
    TARGET_WEIGHT,
    burning,
    curtailment_rules,
    exclusive_split,
)
from dispatch.problem import BoolArray, DispatchProblem
from dispatch.runs import RUN_MIN_DEPTH
from dispatch.solve import (
    Diagnosis,
    Result,
    Schedule,
    SolveOptions,
    SolveStats,
    Status,
    Termination,
    Violation,
    ViolationKind,
)

ELASTIC_FACTOR = 100.0
Model = Any  # pyomo models are untyped


def build_model(
    problem: DispatchProblem,
    *,
    exclusive: BoolArray | None = None,
    elastic: bool = False,
) -> Model:
    """The Pyomo model of `problem`. `m.power[a, t]` is each asset's power (kW, + = drawn)."""
    p = problem
    m = pyo.ConcreteModel(name="dispatch")
    m.T = pyo.Set(initialize=range(p.intervals), ordered=True)
    h = p.horizon.hours
    m.energy = h / 1000.0  # currency per kW·interval at 1 currency/MWh
    m.penalty = p.penalty_per_mwh / 1000.0  # per kWh of a missed target
    m.costs = []  # objective terms gathered from the blocks
    m.power_terms = {}  # asset id -> {t: expression}
    m.soft = []  # (kind, subject, var indexed by t or scalar, scale)
    m.hard = []
    charge_only: list[tuple[int, int]] = []
    pairs: list[tuple[int, int]] = []
    if exclusive is not None:
        only, binary = exclusive_split(p, exclusive)
        charge_only = [(int(i), int(t)) for i, t in zip(*np.nonzero(only), strict=True)]
        pairs = [(int(i), int(t)) for i, t in zip(*np.nonzero(binary), strict=True)]
    m.battery = pyo.Block(rule=lambda b: _battery(b, p, m, charge_only, pairs))
    m.pv = pyo.Block(rule=lambda b: _pv(b, p, m))
    m.curtailable = pyo.Block(rule=lambda b: _curtailable(b, p, m))
    m.shiftable = pyo.Block(rule=lambda b: _shiftable(b, p, m))
    m.thermal = pyo.Block(rule=lambda b: _thermal(b, p, m))
    m.ev = pyo.Block(rule=lambda b: _ev(b, p, m))
    m.generator = pyo.Block(rule=lambda b: _generator(b, p, m))
    m.A = pyo.Set(initialize=p.asset_ids, ordered=True)
    m.power = pyo.Expression(m.A, m.T, rule=lambda m_, a, t: m_.power_terms[a][t])
    m.grid = pyo.Block(rule=lambda b: _grid(b, p, m, elastic))
    m.objective = pyo.Objective(expr=sum(m.costs), sense=pyo.minimize)
    return m


def _battery(
    b: Any,
    p: DispatchProblem,
    m: Any,
    charge_only: list[tuple[int, int]],
    exclusive: list[tuple[int, int]],
) -> None:
    blk = p.batteries
    h = p.horizon.hours
    b.A = pyo.Set(initialize=range(len(blk.asset_ids)), ordered=True)
    b.charge = pyo.Var(b.A, m.T, bounds=lambda _, i, t: (0, blk.charge_max_kw[i, t]))
    b.discharge = pyo.Var(b.A, m.T, bounds=lambda _, i, t: (0, blk.discharge_max_kw[i, t]))
    b.soc = pyo.Var(b.A, m.T, bounds=lambda _, i, t: (blk.energy_min_kwh[i], blk.energy_max_kwh[i]))
    b.short = pyo.Var(b.A, domain=pyo.NonNegativeReals)

    def balance(b: Any, i: int, t: int) -> Any:
        before = blk.energy_initial_kwh[i] if t == 0 else b.soc[i, t - 1]
        stored = blk.charge_efficiency[i] * b.charge[i, t]
        released = b.discharge[i, t] / blk.discharge_efficiency[i]
        return b.soc[i, t] == before + h * (stored - released)

    b.balance = pyo.Constraint(b.A, m.T, rule=balance)
    # Soft: end with at least the terminal energy, else pay the penalty per kWh missing.
    b.terminal = pyo.Constraint(
        b.A, rule=lambda b, i: b.soc[i, p.intervals - 1] + b.short[i] >= blk.energy_terminal_kwh[i]
    )
    # Where it matters (found by the solve loop) the battery may not charge and discharge at
    # once: at negative prices it may only charge (or idle), elsewhere a binary chooses.
    for i, t in charge_only:
        b.discharge[i, t].setub(0)
    b.E = pyo.Set(initialize=exclusive, dimen=2, ordered=True)
    b.charging = pyo.Var(b.E, domain=pyo.Binary)
    b.only_charge = pyo.Constraint(
        b.E, rule=lambda b, i, t: b.charge[i, t] <= blk.charge_max_kw[i, t] * b.charging[i, t]
    )
    b.only_discharge = pyo.Constraint(
        b.E,
        rule=lambda b, i, t: (
            b.discharge[i, t] <= blk.discharge_max_kw[i, t] * (1 - b.charging[i, t])
        ),
    )
    wear = blk.degradation_cost_per_mwh
    m.costs.append(
        sum(wear[i] * m.energy * (b.charge[i, t] + b.discharge[i, t]) for i in b.A for t in m.T)
    )
    m.costs.append(sum(m.penalty * b.short[i] for i in b.A))
    for i, a in enumerate(blk.asset_ids):
        m.power_terms[a] = {t: b.charge[i, t] - b.discharge[i, t] for t in m.T}
        m.soft.append((ViolationKind.TERMINAL_ENERGY, a, b.short[i], 1.0))


def _pv(b: Any, p: DispatchProblem, m: Any) -> None:
    blk = p.pv
    b.A = pyo.Set(initialize=range(len(blk.asset_ids)), ordered=True)
    # Output may be curtailed below the forecast only where the array is curtailable.
    b.output = pyo.Var(
        b.A,
        m.T,
        bounds=lambda _, i, t: (
            0 if blk.curtailable[i, t] else blk.generation_kw[i, t],
            blk.generation_kw[i, t],
        ),
    )
    cost = blk.curtailment_cost_per_mwh
    m.costs.append(
        sum(
            cost[i] * m.energy * (blk.generation_kw[i, t] - b.output[i, t])
            for i in b.A
            for t in m.T
        )
    )
    for i, a in enumerate(blk.asset_ids):
        m.power_terms[a] = {t: -b.output[i, t] for t in m.T}


def _curtailable(b: Any, p: DispatchProblem, m: Any) -> None:
    blk = p.curtailable
    n = len(blk.asset_ids)
    b.A = pyo.Set(initialize=range(n), ordered=True)
    b.reduce = pyo.Var(b.A, m.T, bounds=lambda _, i, t: (0, blk.reduction_max_kw[i, t]))

    # At most max_duration intervals at full depth in any max_duration + max(rest, 1).
    def duration(b: Any, i: int, t: int) -> Any:
        d = int(blk.max_duration_intervals[i])
        window = d + max(int(blk.rest_intervals[i]), 1)
        if d >= p.intervals:
            return pyo.Constraint.Skip
        depth = float(blk.reduction_max_kw[i].max())
        return sum(b.reduce[i, k] for k in range(max(0, t - window + 1), t + 1)) <= d * depth

    b.duration = pyo.Constraint(b.A, m.T, rule=duration)
    # As the plant runs it: loads limited in duration or rest reduce in runs (on/off); a run
    # lasts at most max_duration, one that long rests max(rest, rebound window), one
    # released earlier rests `rest` (see `dispatch.fast._curtailable`).
    timed, rest, forced_rest = curtailment_rules(blk, p.intervals)
    t_last = p.intervals
    b.C = pyo.Set(initialize=timed.tolist(), ordered=True)
    rest_of = dict(zip(timed.tolist(), rest.tolist(), strict=True))
    forced_of = dict(zip(timed.tolist(), forced_rest.tolist(), strict=True))
    b.on = pyo.Var(
        b.C,
        m.T,
        domain=pyo.Binary,
        bounds=lambda _, i, t: (0, 1 if blk.reduction_max_kw[i, t] > 0 else 0),
    )
    b.link = pyo.Constraint(
        b.C, m.T, rule=lambda b, i, t: b.reduce[i, t] <= blk.reduction_max_kw[i, t] * b.on[i, t]
    )
    # A run reduces in each of its intervals (one without reduction would end it).
    b.least = pyo.Constraint(
        b.C,
        m.T,
        rule=lambda b, i, t: (
            b.reduce[i, t] >= RUN_MIN_DEPTH * blk.reduction_max_kw[i, t] * b.on[i, t]
        ),
    )
    b.CD = pyo.Set(
        initialize=[i for i in timed.tolist() if blk.max_duration_intervals[i] < t_last],
        ordered=True,
    )
    b.full = pyo.Var(b.CD, m.T, bounds=(0, 1))

    def ended(b: Any, i: int, t: int) -> Any:
        d = int(blk.max_duration_intervals[i])
        return b.full[i, t] >= sum(b.on[i, k] for k in range(max(0, t - d + 1), t + 1)) - (d - 1)

    b.ended = pyo.Constraint(b.CD, m.T, rule=ended)

    def after_full(b: Any, i: int, t: int) -> Any:
        back = range(max(0, t - forced_of[i]), t)
        return b.on[i, t] + sum(b.full[i, k] for k in back) <= 1

    b.after_full = pyo.Constraint(b.CD, m.T, rule=after_full)
    b.CR = pyo.Set(initialize=[i for i in timed.tolist() if rest_of[i] > 0], ordered=True)
    b.stop = pyo.Var(b.CR, m.T, bounds=lambda _, i, t: (0, 1 if t else 0))
    b.stops = pyo.Constraint(
        b.CR,
        m.T,
        rule=lambda b, i, t: (
            b.stop[i, t] >= b.on[i, t - 1] - b.on[i, t] if t else pyo.Constraint.Skip
        ),
    )

    def resting(b: Any, i: int, t: int) -> Any:
        back = range(max(0, t - rest_of[i] + 1), t + 1)
        return b.on[i, t] + sum(b.stop[i, k] for k in back) <= 1

    b.resting = pyo.Constraint(b.CR, m.T, rule=resting)
    # Rebound: `owed` energy grows by the rebound share of each reduction and is paid back by
    # `draw`: an untimed load within the window after each reduction, a timed one outside
    # its runs and within the window after the run.
    b.R = pyo.Set(initialize=[i for i in range(n) if blk.rebound_fraction[i] > 0], ordered=True)
    b.draw = pyo.Var(b.R, m.T, bounds=lambda _, i, t: (0, blk.rebound_max_kw[i]))
    b.owed = pyo.Var(b.R, m.T, domain=pyo.NonNegativeReals)
    rho = blk.rebound_fraction
    b.flow = pyo.Constraint(
        b.R,
        m.T,
        rule=lambda b, i, t: (
            b.owed[i, t] == (b.owed[i, t - 1] if t else 0) + rho[i] * b.reduce[i, t] - b.draw[i, t]
        ),
    )
    timed_set = set(timed.tolist())

    def recent(b: Any, i: int, t: int) -> Any:
        w = int(blk.rebound_window_intervals[i])
        window = range(max(0, t - w + 1), t + 1)
        if i in timed_set:
            # Runs released early keep their rebound owed: at most all it can reduce.
            most = rho[i] * float(blk.reduction_max_kw[i].sum())
            return b.owed[i, t] <= most * sum(b.on[i, k] for k in window)
        return b.owed[i, t] <= rho[i] * sum(b.reduce[i, k] for k in window)

    b.recent = pyo.Constraint(b.R, m.T, rule=recent)
    b.outside = pyo.Constraint(
        [i for i in b.R if i in timed_set],
        m.T,
        rule=lambda b, i, t: b.draw[i, t] <= blk.rebound_max_kw[i] * (1 - b.on[i, t]),
    )
    last = p.intervals - 1
    cost = blk.cost_per_mwh
    m.costs.append(sum(cost[i] * m.energy * b.reduce[i, t] for i in b.A for t in m.T))
    # What is still owed at the end is bought after the horizon, at the last price.
    m.costs.append(sum(p.price_per_mwh[last] * m.energy * b.owed[i, last] for i in b.R))
    rebounding = set(b.R)
    for i, a in enumerate(blk.asset_ids):
        m.power_terms[a] = {
            t: blk.baseline_kw[i, t] - b.reduce[i, t] + (b.draw[i, t] if i in rebounding else 0)
            for t in m.T
        }


def _shiftable(b: Any, p: DispatchProblem, m: Any) -> None:
    blk = p.shiftable
    h = p.horizon.hours
    n = len(blk.asset_ids)
    free = [i for i in range(n) if blk.interruptible[i] and not blk.fixed[i]]
    runs = [i for i in range(n) if not blk.interruptible[i] and not blk.fixed[i]]
    # Interruptible: any power up to the rating in allowed intervals; energy is soft.
    b.I = pyo.Set(initialize=free, ordered=True)
    b.power = pyo.Var(
        b.I, m.T, bounds=lambda _, i, t: (0, blk.power_kw[i] if blk.allowed[i, t] else 0)
    )
    b.short = pyo.Var(b.I, domain=pyo.NonNegativeReals)
    b.energy = pyo.Constraint(
        b.I,
        rule=lambda b, i: sum(h * b.power[i, t] for t in m.T) + b.short[i] == blk.energy_kwh[i],
    )
    # Uninterruptible: a binary per possible start; runs do not overlap.
    b.U = pyo.Set(initialize=runs, ordered=True)

    def can_start(i: int, t: int) -> bool:
        length = int(blk.run_intervals[i])
        return t + length <= p.intervals and bool(blk.allowed[i, t : t + length].all())

    b.start = pyo.Var(
        b.U, m.T, domain=pyo.Binary, bounds=lambda _, i, t: (0, 1 if can_start(i, t) else 0)
    )
    b.missing_runs = pyo.Var(b.U, domain=pyo.NonNegativeReals)
    b.runs = pyo.Constraint(
        b.U, rule=lambda b, i: sum(b.start[i, t] for t in m.T) + b.missing_runs[i] == blk.runs[i]
    )

    def running(b: Any, i: int, t: int, lag: int) -> Any:
        return b.start[i, t - lag] if t - lag >= 0 else 0

    b.no_overlap = pyo.Constraint(
        b.U,
        m.T,
        rule=lambda b, i, t: sum(running(b, i, t, lag) for lag in range(blk.run_intervals[i])) <= 1,
    )
    m.costs.append(sum(m.penalty * b.short[i] for i in b.I))
    run_kwh = {i: float(blk.run_profile_kw[i].sum()) * h for i in runs}
    m.costs.append(sum(m.penalty * run_kwh[i] * b.missing_runs[i] for i in b.U))
    for i, a in enumerate(blk.asset_ids):
        if i in free:
            m.power_terms[a] = {t: b.power[i, t] for t in m.T}
            m.soft.append((ViolationKind.SHIFTABLE_ENERGY, a, b.short[i], 1.0))
        elif i in runs:
            profile = blk.run_profile_kw[i]
            m.power_terms[a] = {
                t: sum(profile[lag] * running(b, i, t, lag) for lag in range(profile.size))
                for t in m.T
            }
            m.soft.append((ViolationKind.SHIFTABLE_ENERGY, a, b.missing_runs[i], run_kwh[i]))
        else:
            m.power_terms[a] = {t: float(blk.baseline_kw[i, t]) for t in m.T}


def _thermal(b: Any, p: DispatchProblem, m: Any) -> None:
    blk = p.thermal
    n = len(blk.asset_ids)
    a = blk.decay(p.horizon.hours)
    b.A = pyo.Set(initialize=range(n), ordered=True)
    b.power = pyo.Var(
        b.A, m.T, bounds=lambda _, i, t: (blk.power_min_kw[i, t], blk.power_max_kw[i, t])
    )
    b.temp = pyo.Var(b.A, m.T)
    b.over = pyo.Var(b.A, m.T, domain=pyo.NonNegativeReals)
    b.under = pyo.Var(b.A, m.T, domain=pyo.NonNegativeReals)
    b.drift = pyo.Var(b.A, domain=pyo.NonNegativeReals)

    def dynamics(b: Any, i: int, t: int) -> Any:
        before = blk.temp_initial_c[i] if t == 0 else b.temp[i, t - 1]
        ua = blk.loss_kw_per_k[i]
        heat = blk.gain_kw[i] + (1 if blk.heating[i] else -1) * blk.cop[i] * b.power[i, t]
        return b.temp[i, t] == a[i] * before + (1 - a[i]) * (blk.ambient_c[i, t] + heat / ua)

    b.dynamics = pyo.Constraint(b.A, m.T, rule=dynamics)
    b.top = pyo.Constraint(
        b.A, m.T, rule=lambda b, i, t: b.temp[i, t] - b.over[i, t] <= blk.temp_max_c[i]
    )
    b.bottom = pyo.Constraint(
        b.A, m.T, rule=lambda b, i, t: b.temp[i, t] + b.under[i, t] >= blk.temp_min_c[i]
    )
    last = p.intervals - 1

    # End no further towards the costly side than the start (a cold store ends no warmer).
    def end(b: Any, i: int) -> Any:
        if blk.heating[i]:
            return b.temp[i, last] + b.drift[i] >= blk.temp_initial_c[i]
        return b.temp[i, last] - b.drift[i] <= blk.temp_initial_c[i]

    b.end = pyo.Constraint(b.A, rule=end)
    per_k = m.penalty * blk.capacity_kwh_per_k / blk.cop
    m.costs.append(
        sum(per_k[i] * (b.over[i, t] + b.under[i, t]) for i in b.A for t in m.T)
        + sum(per_k[i] * b.drift[i] for i in b.A)
    )
    for i, asset in enumerate(blk.asset_ids):
        m.power_terms[asset] = {t: b.power[i, t] for t in m.T}
        for t in m.T:
            m.soft.append((ViolationKind.TEMPERATURE_BAND, asset, b.over[i, t], 1.0))
            m.soft.append((ViolationKind.TEMPERATURE_BAND, asset, b.under[i, t], 1.0))
        m.soft.append((ViolationKind.TERMINAL_TEMPERATURE, asset, b.drift[i], 1.0))


def _ev(b: Any, p: DispatchProblem, m: Any) -> None:
    blk = p.ev
    h = p.horizon.hours
    b.S = pyo.Set(initialize=range(blk.session_depot.size), ordered=True)
    b.charge = pyo.Var(
        b.S, m.T, bounds=lambda _, s, t: (blk.session_min_kw[s, t], blk.session_max_kw[s, t])
    )
    b.short = pyo.Var(b.S, domain=pyo.NonNegativeReals)
    b.energy = pyo.Constraint(
        b.S,
        rule=lambda b, s: (
            sum(h * b.charge[s, t] for t in m.T) + b.short[s] >= blk.session_energy_kwh[s]
        ),
    )
    sessions = {d: [s for s in b.S if blk.session_depot[s] == d] for d in range(len(blk.asset_ids))}
    b.A = pyo.Set(initialize=range(len(blk.asset_ids)), ordered=True)
    b.station = pyo.Constraint(
        b.A,
        m.T,
        rule=lambda b, d, t: (
            sum(b.charge[s, t] for s in sessions[d]) <= blk.station_limit_kw[d]
            if sessions[d]
            else pyo.Constraint.Skip
        ),
    )
    m.costs.append(sum(m.penalty * b.short[s] for s in b.S))
    for d, a in enumerate(blk.asset_ids):
        m.power_terms[a] = {t: sum(b.charge[s, t] for s in sessions[d]) for t in m.T}
    for s in b.S:
        m.soft.append(
            (ViolationKind.EV_ENERGY, blk.asset_ids[blk.session_depot[s]], b.short[s], 1.0)
        )


def _generator(b: Any, p: DispatchProblem, m: Any) -> None:
    blk = p.generators
    n = len(blk.asset_ids)
    b.A = pyo.Set(initialize=range(n), ordered=True)
    b.output = pyo.Var(b.A, m.T, bounds=lambda _, i, t: (0, blk.max_kw[i, t]))
    ramped = [i for i in range(n) if math.isfinite(blk.ramp_kw_per_interval[i])]
    b.R = pyo.Set(initialize=ramped, ordered=True)

    def ramp(b: Any, i: int, t: int) -> Any:
        if t == 0:
            return pyo.Constraint.Skip
        step = max(blk.ramp_kw_per_interval[i], blk.min_kw[i])
        return pyo.inequality(-step, b.output[i, t] - b.output[i, t - 1], step)

    b.ramp = pyo.Constraint(b.R, m.T, rule=ramp)
    # Unit commitment where there is a minimum output, a start-up cost or a minimum up time.
    b.C = pyo.Set(initialize=np.flatnonzero(blk.needs_commitment).tolist(), ordered=True)
    b.on = pyo.Var(b.C, m.T, domain=pyo.Binary)
    b.start = pyo.Var(b.C, m.T, bounds=(0, 1))
    b.low = pyo.Constraint(
        b.C, m.T, rule=lambda b, i, t: b.output[i, t] >= blk.min_kw[i] * b.on[i, t]
    )
    b.high = pyo.Constraint(
        b.C, m.T, rule=lambda b, i, t: b.output[i, t] <= blk.max_kw[i, t] * b.on[i, t]
    )
    b.starting = pyo.Constraint(
        b.C, m.T, rule=lambda b, i, t: b.start[i, t] >= b.on[i, t] - (b.on[i, t - 1] if t else 0)
    )

    def min_up(b: Any, i: int, t: int) -> Any:
        up = int(blk.min_up_intervals[i])
        if up <= 1:
            return pyo.Constraint.Skip
        return sum(b.start[i, k] for k in range(max(0, t - up + 1), t + 1)) <= b.on[i, t]

    b.min_up = pyo.Constraint(b.C, m.T, rule=min_up)
    unit = blk.cost_per_mwh + p.carbon_price_per_t * blk.emission_kg_per_kwh
    m.costs.append(sum(unit[i] * m.energy * b.output[i, t] for i in b.A for t in m.T))
    m.costs.append(sum(blk.startup_cost[i] * b.start[i, t] for i in b.C for t in m.T))
    for i, a in enumerate(blk.asset_ids):
        m.power_terms[a] = {t: -b.output[i, t] for t in m.T}


def _grid(b: Any, p: DispatchProblem, m: Any, elastic: bool) -> None:
    e = len(p.enterprise_ids)
    ent = p.asset_enterprise_index
    members = {k: [a for a, x in zip(p.asset_ids, ent, strict=True) if x == k] for k in range(e)}
    b.E = pyo.Set(initialize=range(e), ordered=True)
    big = m.penalty * ELASTIC_FACTOR * p.horizon.hours
    b.ent_over = pyo.Var(b.E, m.T, bounds=(0, None if elastic else 0))
    b.ent_under = pyo.Var(b.E, m.T, bounds=(0, None if elastic else 0))

    def enterprise(b: Any, k: int, t: int) -> Any:
        load = sum(m.power[a, t] for a in members[k]) + p.enterprise_base_kw[k, t]
        return pyo.inequality(
            -p.enterprise_export_limit_kw[k],
            load - b.ent_over[k, t] + b.ent_under[k, t],
            p.enterprise_import_limit_kw[k],
        )

    b.enterprise = pyo.Constraint(b.E, m.T, rule=enterprise)
    b.imports = pyo.Var(m.T, bounds=(0, p.park_import_limit_kw))
    b.exports = pyo.Var(m.T, bounds=(0, p.park_export_limit_kw))
    b.over = pyo.Var(m.T, bounds=(0, None if elastic else 0))
    b.under = pyo.Var(m.T, bounds=(0, None if elastic else 0))
    base = p.enterprise_base_kw.sum(axis=0)
    b.balance = pyo.Constraint(
        m.T,
        rule=lambda b, t: (
            sum(m.power[a, t] for a in p.asset_ids) + base[t]
            == b.imports[t] + b.over[t] - b.exports[t] - b.under[t]
        ),
    )
    emission = (
        p.grid_emission_kg_per_kwh
        if p.grid_emission_kg_per_kwh is not None
        else np.zeros(p.intervals)
    )
    buy = p.price_per_mwh + p.carbon_price_per_t * emission
    m.costs.append(
        sum(
            m.energy * (buy[t] * b.imports[t] - p.export_price_per_mwh[t] * b.exports[t])
            for t in m.T
        )
    )
    if elastic:
        m.costs.append(
            sum(big * (b.ent_over[k, t] + b.ent_under[k, t]) for k in b.E for t in m.T)
            + sum(big * (b.over[t] + b.under[t]) for t in m.T)
        )
        for k, name in enumerate(p.enterprise_ids):
            for t in m.T:
                m.hard.append((ViolationKind.ENTERPRISE_IMPORT_LIMIT, name, b.ent_over[k, t], 1.0))
                m.hard.append((ViolationKind.ENTERPRISE_EXPORT_LIMIT, name, b.ent_under[k, t], 1.0))
        for t in m.T:
            m.hard.append((ViolationKind.PARK_IMPORT_LIMIT, "park", b.over[t], 1.0))
            m.hard.append((ViolationKind.PARK_EXPORT_LIMIT, "park", b.under[t], 1.0))
    # An award to follow: the park's net power should equal the target where it is set.
    target = p.target_kw
    b.K = pyo.Set(
        initialize=[] if target is None else np.flatnonzero(np.isfinite(target)).tolist(),
        ordered=True,
    )
    b.more = pyo.Var(b.K, domain=pyo.NonNegativeReals)
    b.less = pyo.Var(b.K, domain=pyo.NonNegativeReals)
    assert target is not None or not b.K
    b.follow = pyo.Constraint(
        b.K,
        rule=lambda b, t: b.imports[t] - b.exports[t] + b.more[t] - b.less[t] == target[t],  # type: ignore[index]
    )
    per_kw = m.penalty * TARGET_WEIGHT * p.horizon.hours
    m.costs.append(sum(per_kw * (b.more[t] + b.less[t]) for t in b.K))
    for t in b.K:
        m.soft.append((ViolationKind.TARGET, "park", b.more[t], 1.0))
        m.soft.append((ViolationKind.TARGET, "park", b.less[t], 1.0))


# --- solving ----------------------------------------------------------------------------------

_TERMINATION = {
    TerminationCondition.optimal: Termination.OPTIMAL,
    TerminationCondition.infeasible: Termination.INFEASIBLE,
    TerminationCondition.infeasibleOrUnbounded: Termination.INFEASIBLE,
    TerminationCondition.unbounded: Termination.UNBOUNDED,
    TerminationCondition.maxTimeLimit: Termination.TIME_LIMIT,
    TerminationCondition.maxIterations: Termination.ITERATION_LIMIT,
    TerminationCondition.interrupted: Termination.INTERRUPTED,
    TerminationCondition.objectiveLimit: Termination.OPTIMAL,
}


def _solver(options: SolveOptions, time_limit_s: float) -> Highs:
    solver = Highs()
    solver.config.time_limit = max(time_limit_s, 0.01)
    solver.config.mip_gap = options.mip_gap
    solver.config.load_solution = False
    solver.highs_options = {"threads": options.threads, "random_seed": 0}
    return solver


def _value(var: Any) -> float:
    value = pyo.value(var, exception=False)
    return float(value) if value is not None else 0.0


def _violations(entries: list[tuple[ViolationKind, str, Any, float]]) -> list[Violation]:
    """Positive slacks grouped by (kind, subject): largest amount, first and count."""
    grouped: dict[tuple[ViolationKind, str], list[tuple[int, float]]] = {}
    for kind, subject, var, scale in entries:
        amount = _value(var) * scale
        if amount > 1e-4:
            index = var.index()
            t = index[-1] if isinstance(index, tuple) else 0
            grouped.setdefault((kind, subject), []).append((int(t), amount))
    return [
        Violation(kind, subject, max(a for _, a in hits), min(t for t, _ in hits), len(hits))
        for (kind, subject), hits in grouped.items()
    ]


def schedule_from_model(m: Model, problem: DispatchProblem) -> Schedule:
    power = np.array(
        [[pyo.value(m.power[a, t]) for t in range(problem.intervals)] for a in problem.asset_ids]
    ).reshape(len(problem.asset_ids), problem.intervals)
    b = m.battery
    soc = {
        a: np.array([_value(b.soc[i, t]) for t in m.T])
        for i, a in enumerate(problem.batteries.asset_ids)
    }
    th = m.thermal
    temp = {
        a: np.array([_value(th.temp[i, t]) for t in m.T])
        for i, a in enumerate(problem.thermal.asset_ids)
    }
    return Schedule(problem.asset_ids, problem.horizon, power, soc, temp)


def _burning(m: Model, problem: DispatchProblem, exclusive: BoolArray | None) -> BoolArray | None:
    blk = problem.batteries
    if not blk.asset_ids:
        return None
    shape = (len(blk.asset_ids), problem.intervals)
    charge = np.array([[_value(m.battery.charge[i, t]) for t in m.T] for i in m.battery.A])
    discharge = np.array([[_value(m.battery.discharge[i, t]) for t in m.T] for i in m.battery.A])
    return burning(problem, charge.reshape(shape), discharge.reshape(shape), exclusive)


def solve_pyomo(problem: DispatchProblem, options: SolveOptions) -> Result:
    """Build and solve the Pyomo model (with the same battery binaries loop as the fast path)."""
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    exclusive: BoolArray | None = None
    build_s = solver_s = 0.0
    while True:
        t0 = time.perf_counter()
        m = build_model(problem, exclusive=exclusive)
        t1 = time.perf_counter()
        outcome = _solver(options, deadline - t1).solve(m)
        solver_s += time.perf_counter() - t1
        build_s += t1 - t0
        termination = _TERMINATION.get(outcome.termination_condition, Termination.SOLVER_ERROR)
        has_solution = outcome.best_feasible_objective is not None and termination in (
            Termination.OPTIMAL,
            Termination.TIME_LIMIT,
            Termination.ITERATION_LIMIT,
            Termination.INTERRUPTED,
        )
        if not has_solution:
            break
        outcome.solution_loader.load_vars()
        exclusive = _burning(m, problem, exclusive)
        if exclusive is None:
            break
    n_vars = sum(1 for _ in m.component_data_objects(pyo.Var, active=True))
    n_rows = sum(1 for _ in m.component_data_objects(pyo.Constraint, active=True))
    n_int = sum(1 for v in m.component_data_objects(pyo.Var, active=True) if v.is_integer())
    diagnosis: Diagnosis | None = None
    schedule: Schedule | None = None
    objective: float | None = None
    proven = True
    if has_solution:
        schedule = schedule_from_model(m, problem)
        objective = float(pyo.value(m.objective))
        soft = _violations(m.soft)
        diagnosis = Diagnosis(soft=tuple(soft)) if soft else None
        bound = outcome.best_objective_bound
        if n_int and bound is not None and math.isfinite(bound):
            proven = abs(objective - bound) <= options.mip_gap * max(abs(objective), 1e-9) + 1e-6
    elif termination is Termination.INFEASIBLE and options.diagnose:
        elastic = build_model(problem, elastic=True)
        check = _solver(options, options.time_limit_s).solve(elastic)
        if check.best_feasible_objective is not None:
            check.solution_loader.load_vars()
            diagnosis = Diagnosis(hard=tuple(_violations(elastic.hard)))
    if has_solution:
        ok = termination is Termination.OPTIMAL and proven
        status = Status.OPTIMAL if ok else Status.FEASIBLE
    elif termination is Termination.INFEASIBLE:
        status = Status.INFEASIBLE
    elif termination in (Termination.TIME_LIMIT, Termination.ITERATION_LIMIT):
        status = Status.NO_SOLUTION
    else:
        status = Status.ERROR
    stats = SolveStats(
        wall_s=time.perf_counter() - started,
        build_s=build_s,
        solver_s=solver_s,
        variables=n_vars,
        constraints=n_rows,
        integer_variables=n_int,
        backend="pyomo",
    )
    return Result(status, termination, schedule, objective, stats, diagnosis)
