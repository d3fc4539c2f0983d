"""Direct HiGHS path: the dispatch problem as numpy arrays passed to highspy in one call.

Each asset kind is written once, vectorised over its assets and intervals, with the same
variables and constraints as the Pyomo blocks in `dispatch.model` (the equivalence tests hold
the two to the same optimum). Large problems are decomposed by enterprise: see
`solve_decomposed`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import highspy
import numpy as np

from dispatch.fanout import DaskParts, Parts, ThreadParts, dask_client
from dispatch.problem import (
    BatteryBlock,
    BoolArray,
    CurtailableBlock,
    DispatchProblem,
    EvBlock,
    GeneratorBlock,
    IntArray,
    PvBlock,
    ShiftableBlock,
    ThermalBlock,
    power_range_kw,
    select_enterprises,
)
from dispatch.runs import RUN_MIN_DEPTH, PlantRules, Rebound, plant_runs, priced_runs
from dispatch.series import FloatArray
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

if TYPE_CHECKING:
    from distributed import Client

INF = highspy.kHighsInf


def _silence_banner() -> None:
    """HiGHS prints a banner to stdout on its first instance, before any option can be set;
    create that instance with stdout closed so a CLI's JSON output stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


_silence_banner()
#: Charge and discharge both above this fraction of their limits count as simultaneous.
SIMULTANEOUS_TOLERANCE = 1e-6
#: Missing the award (target) costs this many times another soft target: the market
#: commitment comes before a battery's end state or a cold store's band.
TARGET_WEIGHT = 10.0
#: A rounded plan within this relative gap of its relaxation counts as optimal whatever the
#: MIP gap asked: the LP's own tolerances are about this size.
PROVEN_GAP = 1e-6
#: An elastic (diagnosis) slack costs this many times the soft-target penalty.
ELASTIC_FACTOR = 100.0


class LinearProgram:
    """Columns, rows and coefficients gathered as arrays, then handed to HiGHS at once."""

    def __init__(self) -> None:
        self.lower: list[FloatArray] = []
        self.upper: list[FloatArray] = []
        self.cost: list[FloatArray] = []
        self.integer: list[FloatArray] = []
        self.n = 0
        self.row_lower: list[FloatArray] = []
        self.row_upper: list[FloatArray] = []
        self.m = 0
        self.coef_rows: list[IntArray] = []
        self.coef_cols: list[IntArray] = []
        self.coef_values: list[FloatArray] = []
        self.offset = 0.0
        self.has_integers = False

    def variables(
        self,
        shape: tuple[int, ...],
        lower: object = 0.0,
        upper: object = INF,
        cost: object = 0.0,
        integer: bool = False,
    ) -> IntArray:
        size = int(np.prod(shape))
        index = np.arange(self.n, self.n + size, dtype=np.int64).reshape(shape)
        self.n += size
        self.lower.append(np.broadcast_to(np.asarray(lower, float), shape).ravel())
        self.upper.append(np.broadcast_to(np.asarray(upper, float), shape).ravel())
        self.cost.append(np.broadcast_to(np.asarray(cost, float), shape).ravel())
        self.integer.append(np.full(size, 1.0 if integer else 0.0))
        self.has_integers |= integer and size > 0
        return index

    def constraints(self, shape: tuple[int, ...], lower: object, upper: object) -> IntArray:
        size = int(np.prod(shape))
        index = np.arange(self.m, self.m + size, dtype=np.int64).reshape(shape)
        self.m += size
        self.row_lower.append(np.broadcast_to(np.asarray(lower, float), shape).ravel())
        self.row_upper.append(np.broadcast_to(np.asarray(upper, float), shape).ravel())
        return index

    def terms(self, rows: object, cols: object, values: object) -> None:
        r, c, v = np.broadcast_arrays(
            np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(values, float)
        )
        keep = v != 0
        self.coef_rows.append(r[keep].ravel())
        self.coef_cols.append(c[keep].ravel())
        self.coef_values.append(v[keep].ravel())

    def set_bounds(self, cols: IntArray, lower: object, upper: object) -> None:
        """Narrow already-created columns (used before `model`)."""
        lo = np.concatenate(self.lower)
        hi = np.concatenate(self.upper)
        lo[cols] = np.broadcast_to(np.asarray(lower, float), cols.shape)
        hi[cols] = np.broadcast_to(np.asarray(upper, float), cols.shape)
        self.lower, self.upper = [lo], [hi]

    def pass_to(self, highs: highspy.Highs, *, relaxed: bool = False) -> None:
        """Give `highs` the model, as arrays in one call; `relaxed` leaves every column
        continuous (the LP relaxation)."""
        rows = _cat_int(self.coef_rows)
        cols = _cat_int(self.coef_cols)
        order = np.lexsort((rows, cols))
        starts = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=self.n), out=starts[1:])
        integrality = np.zeros(self.n, dtype=np.int32)  # 0: kContinuous, 1: kInteger
        if self.has_integers and not relaxed:
            integrality = _cat(self.integer).astype(np.int32)
        status = highs.passModel(
            self.n,
            self.m,
            int(order.size),
            int(highspy.MatrixFormat.kColwise),
            int(highspy.ObjSense.kMinimize),
            self.offset,
            _cat(self.cost),
            _cat(self.lower),
            _cat(self.upper),
            _cat(self.row_lower),
            _cat(self.row_upper),
            starts[:-1].astype(np.int32),
            rows[order].astype(np.int32),
            _cat(self.coef_values)[order],
            integrality,
        )
        if status == highspy.HighsStatus.kError:
            raise RuntimeError("HiGHS refused the model")

    @property
    def nonzeros(self) -> int:
        return int(sum(v.size for v in self.coef_values))


def _cat(parts: Sequence[FloatArray]) -> FloatArray:
    return np.concatenate(parts) if parts else np.zeros(0)


def _cat_int(parts: Sequence[IntArray]) -> IntArray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclass(slots=True)
class _Soft:
    """A family of slack columns whose positive values are reported as violations."""

    kind: ViolationKind
    subjects: tuple[str, ...]
    cols: IntArray  # (n,) or (n, T)
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class _RunStarts:
    """Start binaries of one uninterruptible load: `runs` non-overlapping runs of `length`."""

    cols: IntArray
    length: int
    runs: int

    def round(self, x: FloatArray, marginal: Marginal | None = None) -> FloatArray:
        """The LP's most-wanted starts, greedily, that do not overlap (`marginal`: unused)."""
        values = x[self.cols]
        chosen = np.zeros(self.cols.size)
        busy = np.zeros(self.cols.size + self.length, dtype=bool)
        for k in np.argsort(-values, kind="stable"):
            if chosen.sum() >= self.runs or values[k] <= 1e-6:
                break
            if not busy[k : k + self.length].any():
                chosen[k] = 1.0
                busy[k : k + self.length] = True
        return chosen


@dataclass(frozen=True, slots=True)
class _Threshold:
    """Binaries rounded at one half (commitment, charge-or-discharge)."""

    cols: IntArray

    def round(self, x: FloatArray, marginal: Marginal | None = None) -> FloatArray:
        return np.asarray((x[self.cols] >= 0.5).astype(float))


@dataclass(slots=True)
class Built:
    """A generated model and where to find each quantity in its solution."""

    lp: LinearProgram
    problem: DispatchProblem
    # Power of asset `power_asset[j]` in interval `power_interval[j]` gets
    # `power_coef[j] * x[power_col[j]]`, on top of `power_const`.
    power_asset: list[IntArray] = field(default_factory=list)
    power_interval: list[IntArray] = field(default_factory=list)
    power_col: list[IntArray] = field(default_factory=list)
    power_coef: list[FloatArray] = field(default_factory=list)
    power_const: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    soc_cols: IntArray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    charge_cols: IntArray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    discharge_cols: IntArray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    temp_cols: IntArray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    import_cols: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    export_cols: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    net_cols: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    owed_cols: IntArray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    enterprise_rows: IntArray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    grid_rows: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    soft: list[_Soft] = field(default_factory=list)
    hard: list[_Soft] = field(default_factory=list)
    exclusive: BoolArray | None = None
    rounding: list[_RunStarts | _Threshold | _Curtailments] = field(default_factory=list)
    runs: _RunBounds | None = None
    build_s: float = 0.0

    def add_power(self, asset: IntArray, cols: IntArray, coef: object) -> None:
        t = self.problem.intervals
        asset2 = np.broadcast_to(np.asarray(asset)[:, None], cols.shape)
        interval = np.broadcast_to(np.arange(t)[None, :], cols.shape)
        self.power_asset.append(asset2.ravel())
        self.power_interval.append(interval.ravel())
        self.power_col.append(cols.ravel())
        self.power_coef.append(np.broadcast_to(np.asarray(coef, float), cols.shape).ravel())

    def marginal(self, highs: highspy.Highs) -> Marginal | None:
        """What a kW more costs at each enterprise's connection, by the row duals of `highs`'s
        last solve; None unless that solve reached its optimum with finite duals (the duals
        of an unfinished solve are no prices)."""
        if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        y = np.asarray(highs.getSolution().row_dual)
        kw = -(y[self.enterprise_rows] + y[self.grid_rows][None, :])
        return Marginal(kw, owed_cost(self.problem)) if np.all(np.isfinite(kw)) else None

    def power(self, x: FloatArray) -> FloatArray:
        power = self.power_const.copy()
        if self.power_col:
            cols = _cat_int(self.power_col)
            real = cols >= 0
            np.add.at(
                power,
                (_cat_int(self.power_asset)[real], _cat_int(self.power_interval)[real]),
                _cat(self.power_coef)[real] * x[cols[real]],
            )
        return power


def build(
    problem: DispatchProblem,
    *,
    exclusive: BoolArray | None = None,
    elastic: bool = False,
    net_column: bool = False,
    runs_as_bounds: bool = False,
) -> Built:
    """The model of `problem` as arrays.

    `exclusive` (batteries × intervals) marks where a binary forbids charging and discharging
    at once;
    `elastic` relaxes every hard limit with a heavily penalised slack (for the diagnosis);
    `net_column` puts the park's net power in its own column bounded by the park limits, so a
    sub-problem's share of those limits can be changed in place (`Built.net_cols`);
    `runs_as_bounds` models curtailment runs without binaries: the model is then a relaxation
    of the plant's rules (`Built.runs`), and `Rounded` imposes runs by bounds.
    """
    started = time.perf_counter()
    lp = LinearProgram()
    built = Built(lp, problem)
    built.exclusive = exclusive
    t = problem.intervals
    n_assets = len(problem.asset_ids)
    built.power_const = np.zeros((n_assets, t))
    offset = 0
    offset = _battery(built, problem.batteries, offset, exclusive)
    offset = _pv(built, problem.pv, offset)
    offset = _curtailable(built, problem.curtailable, offset, runs_as_bounds)
    offset = _shiftable(built, problem.shiftable, offset)
    offset = _thermal(built, problem.thermal, offset)
    offset = _ev(built, problem.ev, offset)
    offset = _generators(built, problem.generators, offset)
    _coupling(built, elastic, net_column)
    built.build_s = time.perf_counter() - started
    return built


def _energy(problem: DispatchProblem) -> float:
    """Currency per (kW × interval) at 1 currency/MWh."""
    return problem.horizon.hours / 1000.0


def _penalty_kwh(problem: DispatchProblem) -> float:
    return problem.penalty_per_mwh / 1000.0


def _shifted(index: IntArray) -> IntArray:
    """The column of the previous interval (same row), for t >= 1."""
    return index[:, :-1]


def _battery(built: Built, block: BatteryBlock, offset: int, exclusive: BoolArray | None) -> int:
    n = len(block.asset_ids)
    if n == 0:
        return offset
    p = built.problem
    lp = built.lp
    t = p.intervals
    h = p.horizon.hours
    wear = block.degradation_cost_per_mwh[:, None] * _energy(p)
    charge = lp.variables((n, t), 0.0, block.charge_max_kw, wear)
    discharge = lp.variables((n, t), 0.0, block.discharge_max_kw, wear)
    soc = lp.variables((n, t), block.energy_min_kwh[:, None], block.energy_max_kwh[:, None])
    rhs = np.zeros((n, t))
    rhs[:, 0] = block.energy_initial_kwh
    balance = lp.constraints((n, t), rhs, rhs)
    lp.terms(balance, soc, 1.0)
    lp.terms(balance[:, 1:], _shifted(soc), -1.0)
    lp.terms(balance, charge, -h * block.charge_efficiency[:, None])
    lp.terms(balance, discharge, h / block.discharge_efficiency[:, None])
    short = lp.variables((n,), 0.0, INF, _penalty_kwh(p))
    terminal = lp.constraints((n,), block.energy_terminal_kwh, INF)
    lp.terms(terminal, soc[:, -1], 1.0)
    lp.terms(terminal, short, 1.0)
    built.soft.append(_Soft(ViolationKind.TERMINAL_ENERGY, block.asset_ids, short))
    if exclusive is not None and exclusive.any():
        charge_only, binary = exclusive_split(p, exclusive)
        b_idx, t_idx = np.nonzero(charge_only)
        lp.set_bounds(discharge[b_idx, t_idx], 0.0, 0.0)
        b_idx, t_idx = np.nonzero(binary)
        k = b_idx.size
        charging = lp.variables((k,), 0.0, 1.0, 0.0, integer=True)
        built.rounding.append(_Threshold(charging))
        cmax = block.charge_max_kw[b_idx, t_idx]
        dmax = block.discharge_max_kw[b_idx, t_idx]
        rows_c = lp.constraints((k,), -INF, 0.0)
        lp.terms(rows_c, charge[b_idx, t_idx], 1.0)
        lp.terms(rows_c, charging, -cmax)
        rows_d = lp.constraints((k,), -INF, dmax)
        lp.terms(rows_d, discharge[b_idx, t_idx], 1.0)
        lp.terms(rows_d, charging, dmax)
    assets = offset + np.arange(n)
    built.add_power(assets, charge, 1.0)
    built.add_power(assets, discharge, -1.0)
    built.soc_cols, built.charge_cols, built.discharge_cols = soc, charge, discharge
    return offset + n


def _pv(built: Built, block: PvBlock, offset: int) -> int:
    n = len(block.asset_ids)
    if n == 0:
        return offset
    p = built.problem
    t = p.intervals
    cost = block.curtailment_cost_per_mwh[:, None] * _energy(p)
    # Output is a column only where it may be curtailed; elsewhere it is the forecast.
    upper = np.where(block.curtailable, block.generation_kw, 0.0)
    output = built.lp.variables((n, t), 0.0, upper, -cost)
    built.lp.offset += float(np.sum(cost * upper))
    built.power_const[offset : offset + n] -= np.where(block.curtailable, 0.0, block.generation_kw)
    built.add_power(offset + np.arange(n), output, -1.0)
    return offset + n


def _window_sum(
    lp: LinearProgram, rows: IntArray, cols: IntArray, length: IntArray, coef: object
) -> None:
    """Add coef × cols[i, t-length[i]+1 .. t] to rows[i, t] (windows cut at the start)."""
    n, t = cols.shape
    coef_arr = np.broadcast_to(np.asarray(coef, float), (n,))
    for lag in range(int(length.max(initial=0))):
        active = lag < length
        if not active.any() or lag >= t:
            continue
        r = rows[active][:, lag:]
        c = cols[active][:, : t - lag]
        lp.terms(r, c, coef_arr[active][:, None])


@dataclass(frozen=True, slots=True)
class Marginal:
    """What a kW more costs, per interval: at each enterprise's connection (enterprises × T,
    from a solve's duals, so with its limits and the park's as they bind), and still owed as
    rebound at the end."""

    kw: FloatArray
    owed_end: float


@dataclass(frozen=True, slots=True)
class _Curtailments:
    """On/off binaries of curtailable loads, rounded the way the plant would run them."""

    cols: IntArray  # (k × T,), load by load
    intervals: int
    rules: PlantRules
    # What their runs are worth (`priced_runs`):
    enterprise: IntArray  # (k,) each load's enterprise
    depth_kw: FloatArray  # (k, T) reduction limits
    cost: FloatArray  # (k,) per kW·interval reduced
    rebound: Rebound

    def round(self, x: FloatArray, marginal: Marginal | None = None) -> FloatArray:
        """The runs the plant allows: with `marginal` prices those worth the most at them
        (`priced_runs`); else the pattern of runs covering the most of the relaxation's
        (fractional) on/off and nothing where it is off."""
        if marginal is not None:
            return self.priced(marginal).ravel()
        wanted = x[self.cols].reshape(-1, self.intervals)
        return plant_runs(np.where(wanted > 1e-6, wanted, -1.0), self.rules).ravel()

    def priced(self, marginal: Marginal) -> FloatArray:
        """(k, T) on/off worth the most at the `marginal` prices of their enterprises."""
        drawn = marginal.kw[self.enterprise]
        gain = drawn - self.cost[:, None]
        return priced_runs(gain, drawn, self.depth_kw, self.rules, self.rebound, marginal.owed_end)


@dataclass(frozen=True, slots=True)
class _RunBounds:
    """Curtailment runs imposed by bounds on a relaxation (`build(runs_as_bounds=True)`):
    where a load is not in a run its reduction is 0; a rebounding load draws only outside its
    runs and owes nothing past the rebound window after a run, which replaces the
    relaxation's looser repayment rows."""

    rules: _Curtailments  # its cols are the timed loads' reduction columns
    depth_kw: FloatArray  # (k, T) their reduction limits
    which: IntArray  # (r,) timed loads that rebound, as rows of the above
    draw_cols: IntArray  # (r, T)
    draw_max_kw: FloatArray  # (r,)
    owed_cols: IntArray  # (r, T)
    repay_rows: IntArray  # (r, T)
    window: IntArray  # (r,) rebound window in intervals

    def runs(self, x: FloatArray, marginal: Marginal | None = None) -> FloatArray:
        """(k, T) on/off: the plant's runs worth the most at `marginal` prices, or without
        them those best matching the relaxation's reductions."""
        if marginal is not None:
            return self.rules.priced(marginal)
        reduce = x[self.rules.cols].reshape(self.depth_kw.shape)
        depth = np.maximum(self.depth_kw, 1e-9)
        share = np.where(self.depth_kw > 0, reduce / depth, 0.0)
        return plant_runs(np.where(share > 1e-6, share, -1.0), self.rules.rules)

    def bounds(
        self, on: FloatArray | None
    ) -> tuple[IntArray, FloatArray, FloatArray, IntArray, FloatArray]:
        """(columns, their lower and upper bounds, repayment rows, their upper bounds) for
        runs `on`, or the relaxation's when None."""
        reduce_cols = self.rules.cols
        t = self.depth_kw.shape[1]
        lower = np.zeros(reduce_cols.size + self.draw_cols.size + self.owed_cols.size)
        if on is None:
            reduce_up = self.depth_kw.ravel()
            draw_up = np.broadcast_to(self.draw_max_kw[:, None], self.draw_cols.shape).ravel()
            owed_up = np.full(self.owed_cols.size, INF)
            rows_up = np.zeros(self.repay_rows.size)
        else:
            reduce_up = (self.depth_kw * on).ravel()
            lower[: reduce_cols.size] = RUN_MIN_DEPTH * reduce_up
            mine = on[self.which]
            draw_up = (self.draw_max_kw[:, None] * (1.0 - mine)).ravel()
            # Owed only up to the rebound window after the last interval of a run.
            before = np.zeros((mine.shape[0], t + 1))
            np.cumsum(mine, axis=1, out=before[:, 1:])
            start = np.maximum(np.arange(t)[None, :] + 1 - self.window[:, None], 0)
            recent = before[:, 1:] - np.take_along_axis(before, start, axis=1)
            owed_up = np.where(recent > 0, INF, 0.0).ravel()
            rows_up = np.full(self.repay_rows.size, INF)
        cols = np.concatenate([reduce_cols, self.draw_cols.ravel(), self.owed_cols.ravel()])
        upper = np.concatenate([reduce_up, draw_up, owed_up])
        return cols, lower, upper, self.repay_rows.ravel(), rows_up


def curtailment_rules(block: CurtailableBlock, t: int) -> tuple[IntArray, IntArray, IntArray]:
    """(loads that need on/off decisions, their rest, their rest after a forced release).

    The plant counts any reduction, however shallow, towards `max_duration`; a reduction that
    reaches it is released and rests at least the rebound window (or `rest`, if longer), one
    released earlier rests `rest`. A load limited in neither way needs no decision.
    """
    timed = np.flatnonzero((block.max_duration_intervals < t) | (block.rest_intervals > 0))
    rest = block.rest_intervals[timed]
    forced = np.where(
        block.max_duration_intervals[timed] < t,
        np.maximum(rest, block.rebound_window_intervals[timed]),
        rest,
    )
    return timed, rest, forced


def _curtailable(built: Built, block: CurtailableBlock, offset: int, as_bounds: bool) -> int:
    """Process loads, as the plant runs them (adapters/sim.py, CurtailableLoadModel).

    A load limited in duration or rest gets a binary per interval: reducing or not. A run of
    reductions lasts at most `max_duration` intervals; one that lasts that long is released
    and rests max(rest, rebound window) intervals, one released earlier rests `rest`. The
    rebound of a run is drawn outside reductions and repaid within the rebound window after
    the run. (The horizon is assumed to start outside a reduction.) The LP relaxation is
    tightened by the linear duration limit: at most max_duration intervals at full depth in
    any max_duration + max(rest, 1).

    With `as_bounds` there are no binaries: the model is the relaxation (nothing of a timed
    load's rebound is owed a window after its last reduction) and `Built.runs` says how
    `Rounded` imposes the runs by bounds.
    """
    n = len(block.asset_ids)
    if n == 0:
        return offset
    p = built.problem
    lp = built.lp
    t = p.intervals
    cost = block.cost_per_mwh[:, None] * _energy(p)
    reduce = lp.variables((n, t), 0.0, block.reduction_max_kw, cost)
    assets = offset + np.arange(n)
    built.power_const[offset : offset + n] += block.baseline_kw
    built.add_power(assets, reduce, -1.0)
    window = block.max_duration_intervals + np.maximum(block.rest_intervals, 1)
    limited = np.flatnonzero(block.max_duration_intervals < t)
    if limited.size:
        depth = block.reduction_max_kw[limited].max(axis=1)
        cap = (block.max_duration_intervals[limited] * depth)[:, None]
        rows = lp.constraints((limited.size, t), -INF, cap)
        _window_sum(lp, rows, reduce[limited], window[limited], 1.0)
    timed, rest, forced_rest = curtailment_rules(block, t)
    on = np.zeros((0, t), np.int64)
    rules: _Curtailments | None = None
    if timed.size:
        duration = block.max_duration_intervals[timed]
        depth_kw = block.reduction_max_kw[timed]
        if not as_bounds:
            on = lp.variables((timed.size, t), 0.0, (depth_kw > 0).astype(float), integer=True)
        rules = _Curtailments(
            (reduce[timed] if as_bounds else on).ravel(),
            t,
            PlantRules(duration, rest, forced_rest),
            block.enterprise_index[timed],
            depth_kw,
            cost[timed, 0],
            Rebound(
                block.rebound_fraction[timed],
                block.rebound_window_intervals[timed],
                block.rebound_max_kw[timed],
            ),
        )
    if rules is not None and not as_bounds:
        k = timed.size
        built.rounding.append(rules)
        link = lp.constraints((k, t), -INF, 0.0)  # reduce <= depth × on
        lp.terms(link, reduce[timed], 1.0)
        lp.terms(link, on, -depth_kw)
        least = lp.constraints((k, t), 0.0, INF)  # reduce >= RUN_MIN_DEPTH × depth × on
        lp.terms(least, reduce[timed], 1.0)
        lp.terms(least, on, -RUN_MIN_DEPTH * depth_kw)
        cut = np.flatnonzero(duration < t)
        if cut.size:
            # full[t] = 1 when a run of max_duration ends at t: nothing for forced_rest after.
            d = duration[cut]
            full = lp.variables((cut.size, t), 0.0, 1.0)
            ended = lp.constraints((cut.size, t), -(d - 1.0)[:, None], INF)
            lp.terms(ended, full, 1.0)
            _window_sum(lp, ended, on[cut], d, -1.0)
            after = lp.constraints((cut.size, t), -INF, 1.0)
            lp.terms(after, on[cut], 1.0)
            _window_sum(lp, after[:, 1:], full[:, :-1], forced_rest[cut], 1.0)
        rested = np.flatnonzero(rest > 0)
        if rested.size:
            # stop[t] = 1 when a run ended at t - 1: nothing for `rest` intervals from t.
            m = rested.size
            upper = np.ones((m, t))
            upper[:, 0] = 0.0
            stop = lp.variables((m, t), 0.0, upper)
            ends = lp.constraints((m, t - 1), 0.0, INF)
            lp.terms(ends, stop[:, 1:], 1.0)
            lp.terms(ends, on[rested][:, :-1], -1.0)
            lp.terms(ends, on[rested][:, 1:], 1.0)
            down = lp.constraints((m, t), -INF, 1.0)
            lp.terms(down, on[rested], 1.0)
            _window_sum(lp, down, stop, rest[rested], 1.0)
    rebound = np.flatnonzero(block.rebound_fraction > 0)
    if rebound.size:
        k = rebound.size
        rho = block.rebound_fraction[rebound]
        draw_max = block.rebound_max_kw[rebound]
        draw = lp.variables((k, t), 0.0, draw_max[:, None])
        last_price = np.zeros((k, t))
        last_price[:, -1] = owed_cost(p)
        owed = lp.variables((k, t), 0.0, INF, last_price)
        built.owed_cols = owed
        flow = lp.constraints((k, t), 0.0, 0.0)
        lp.terms(flow, owed, 1.0)
        lp.terms(flow[:, 1:], _shifted(owed), -1.0)
        lp.terms(flow, reduce[rebound], -rho[:, None])
        lp.terms(flow, draw, 1.0)
        position = np.full(n, -1)
        position[timed] = np.arange(timed.size)
        window_w = block.rebound_window_intervals[rebound]
        free = position[rebound] < 0
        # The most a load can owe: runs released early and started again keep their rebound
        # owed (the plant adds each run's to what is left), so all it can reduce.
        depths = block.reduction_max_kw[rebound]
        most = rho * depths.sum(axis=1)
        owe_coef = rho
        if as_bounds:
            # Relaxed: nothing owed a window after the last reduction (owed <= most × on,
            # below, with on <= reduce / (RUN_MIN_DEPTH × depth)).
            shallowest = np.where(depths > 0, depths, np.inf).min(axis=1)
            shallowest = np.where(np.isfinite(shallowest), shallowest, 1.0)
            owe_coef = np.where(free, rho, most / (RUN_MIN_DEPTH * shallowest))
            free[:] = True
        if free.any():
            # Untimed: each reduction's rebound within the window after it.
            f = np.flatnonzero(free)
            recent = lp.constraints((f.size, t), -INF, 0.0)
            lp.terms(recent, owed[f], 1.0)
            _window_sum(lp, recent, reduce[rebound[f]], window_w[f], -owe_coef[f])
            if rules is not None and as_bounds:
                timed_rebound = np.flatnonzero(position[rebound] >= 0)
                built.runs = _RunBounds(
                    rules,
                    block.reduction_max_kw[timed],
                    position[rebound[timed_rebound]],
                    draw[timed_rebound],
                    draw_max[timed_rebound],
                    owed[timed_rebound],
                    recent[timed_rebound],
                    block.rebound_window_intervals[rebound[timed_rebound]],
                )
        if (~free).any():
            # Timed: drawn outside reductions, all of it within the window after the run.
            j = np.flatnonzero(~free)
            on_j = on[position[rebound[j]]]
            outside = lp.constraints((j.size, t), -INF, draw_max[j][:, None])
            lp.terms(outside, draw[j], 1.0)
            lp.terms(outside, on_j, draw_max[j][:, None])
            recent = lp.constraints((j.size, t), -INF, 0.0)
            lp.terms(recent, owed[j], 1.0)
            _window_sum(lp, recent, on_j, window_w[j], -most[j])
        built.add_power(assets[rebound], draw, 1.0)
    if rules is not None and as_bounds and built.runs is None:
        none = np.zeros((0, t), np.int64)
        built.runs = _RunBounds(
            rules,
            block.reduction_max_kw[timed],
            np.zeros(0, np.int64),
            none,
            np.zeros(0),
            none,
            none,
            np.zeros(0, np.int64),
        )
    return offset + n


def _shiftable(built: Built, block: ShiftableBlock, offset: int) -> int:
    n = len(block.asset_ids)
    if n == 0:
        return offset
    p = built.problem
    lp = built.lp
    t = p.intervals
    h = p.horizon.hours
    fixed = block.fixed
    built.power_const[offset : offset + n] += np.where(fixed[:, None], block.baseline_kw, 0.0)
    free = np.flatnonzero(block.interruptible & ~fixed)
    if free.size:
        k = free.size
        upper = np.where(block.allowed[free], block.power_kw[free][:, None], 0.0)
        power = lp.variables((k, t), 0.0, upper)
        short = lp.variables((k,), 0.0, INF, _penalty_kwh(p))
        energy = lp.constraints((k,), block.energy_kwh[free], block.energy_kwh[free])
        lp.terms(energy[:, None], power, h)
        lp.terms(energy, short, 1.0)
        built.add_power(offset + free, power, 1.0)
        built.soft.append(
            _Soft(ViolationKind.SHIFTABLE_ENERGY, tuple(block.asset_ids[i] for i in free), short)
        )
    for i in np.flatnonzero(~block.interruptible & ~fixed):
        profile = block.run_profile_kw[i]
        length = profile.size
        starts = _run_starts(block.allowed[i], length)
        start = lp.variables((1, t), 0.0, starts.astype(float)[None, :], integer=True)
        built.rounding.append(_RunStarts(start[0], length, int(block.runs[i])))
        short = lp.variables((1,), 0.0, INF, _penalty_kwh(p) * profile.sum() * h)
        runs = lp.constraints((1,), float(block.runs[i]), float(block.runs[i]))
        lp.terms(runs[:, None], start, 1.0)
        lp.terms(runs, short, 1.0)
        overlap = lp.constraints((1, t), -INF, 1.0)
        for lag in range(length):
            lp.terms(overlap[:, lag:], start[:, : t - lag], 1.0)
            built.add_power(np.array([offset + i]), _lag_cols(start, lag), profile[lag])
        built.soft.append(
            _Soft(ViolationKind.SHIFTABLE_ENERGY, (block.asset_ids[i],), short, profile.sum() * h)
        )
    return offset + n


def _run_starts(allowed: np.ndarray, length: int) -> np.ndarray:
    """Intervals where a run of `length` intervals may start (all of it allowed, in horizon)."""
    t = allowed.size
    ok = np.zeros(t, dtype=bool)
    for k in range(t - length + 1):
        ok[k] = bool(allowed[k : k + length].all())
    return ok


def _lag_cols(start: IntArray, lag: int) -> IntArray:
    """Columns of `start` delayed by `lag` intervals; -1 (no column) before it."""
    out = np.full(start.shape, -1, dtype=np.int64)
    out[:, lag:] = start[:, : start.shape[1] - lag]
    return out


def _thermal(built: Built, block: ThermalBlock, offset: int) -> int:
    n = len(block.asset_ids)
    if n == 0:
        return offset
    p = built.problem
    lp = built.lp
    t = p.intervals
    a = block.decay(p.horizon.hours)[:, None]
    sign = np.where(block.heating, 1.0, -1.0)[:, None]
    ua = block.loss_kw_per_k[:, None]
    power = lp.variables((n, t), block.power_min_kw, block.power_max_kw)
    temp = lp.variables((n, t), -INF, INF)
    rhs = (1 - a) * (block.ambient_c + block.gain_kw[:, None] / ua)
    rhs[:, 0] += a[:, 0] * block.temp_initial_c
    dynamics = lp.constraints((n, t), rhs, rhs)
    lp.terms(dynamics, temp, 1.0)
    lp.terms(dynamics[:, 1:], _shifted(temp), -a)
    lp.terms(dynamics, power, -(1 - a) * sign * block.cop[:, None] / ua)
    # A kelvin of band or end temperature is worth the electric energy that moves it.
    per_k = _penalty_kwh(p) * block.capacity_kwh_per_k / block.cop
    over = lp.variables((n, t), 0.0, INF, per_k[:, None])
    under = lp.variables((n, t), 0.0, INF, per_k[:, None])
    top = lp.constraints((n, t), -INF, block.temp_max_c[:, None])
    lp.terms(top, temp, 1.0)
    lp.terms(top, over, -1.0)
    bottom = lp.constraints((n, t), block.temp_min_c[:, None], INF)
    lp.terms(bottom, temp, 1.0)
    lp.terms(bottom, under, 1.0)
    drift = lp.variables((n,), 0.0, INF, per_k)
    # End no further towards the costly side than the start: cooling ends no warmer.
    end = lp.constraints((n,), -INF, block.temp_initial_c * -sign[:, 0])
    lp.terms(end, temp[:, -1], -sign[:, 0])
    lp.terms(end, drift, -1.0)
    built.add_power(offset + np.arange(n), power, 1.0)
    built.temp_cols = temp
    built.soft.append(_Soft(ViolationKind.TEMPERATURE_BAND, block.asset_ids, over))
    built.soft.append(_Soft(ViolationKind.TEMPERATURE_BAND, block.asset_ids, under))
    built.soft.append(_Soft(ViolationKind.TERMINAL_TEMPERATURE, block.asset_ids, drift))
    return offset + n


def _ev(built: Built, block: EvBlock, offset: int) -> int:
    n = len(block.asset_ids)
    if n == 0:
        return offset
    p = built.problem
    lp = built.lp
    t = p.intervals
    h = p.horizon.hours
    m = block.session_depot.size
    if m:
        charge = lp.variables((m, t), block.session_min_kw, block.session_max_kw)
        short = lp.variables((m,), 0.0, INF, _penalty_kwh(p))
        energy = lp.constraints((m,), block.session_energy_kwh, INF)
        lp.terms(energy[:, None], charge, h)
        lp.terms(energy, short, 1.0)
        station = lp.constraints((n, t), -INF, block.station_limit_kw[:, None])
        lp.terms(station[block.session_depot], charge, 1.0)
        built.add_power(offset + block.session_depot, charge, 1.0)
        subjects = tuple(block.asset_ids[d] for d in block.session_depot)
        built.soft.append(_Soft(ViolationKind.EV_ENERGY, subjects, short))
    return offset + n


def _generators(built: Built, block: GeneratorBlock, offset: int) -> int:
    n = len(block.asset_ids)
    if n == 0:
        return offset
    p = built.problem
    lp = built.lp
    t = p.intervals
    unit = block.cost_per_mwh + p.carbon_price_per_t * block.emission_kg_per_kwh
    output = lp.variables((n, t), 0.0, block.max_kw, unit[:, None] * _energy(p))
    ramp = block.ramp_kw_per_interval
    limited = np.flatnonzero(np.isfinite(ramp))
    if limited.size:
        step = np.maximum(ramp[limited], block.min_kw[limited])[:, None]
        rows = lp.constraints((limited.size, t - 1), -step, step)
        lp.terms(rows, output[limited][:, 1:], 1.0)
        lp.terms(rows, output[limited][:, :-1], -1.0)
    committed = np.flatnonzero(block.needs_commitment)
    if committed.size:
        k = committed.size
        on = lp.variables((k, t), 0.0, 1.0, integer=True)
        built.rounding.append(_Threshold(on.ravel()))
        start = lp.variables((k, t), 0.0, 1.0, block.startup_cost[committed][:, None])
        low = lp.constraints((k, t), 0.0, INF)
        lp.terms(low, output[committed], 1.0)
        lp.terms(low, on, -block.min_kw[committed][:, None])
        high = lp.constraints((k, t), -INF, 0.0)
        lp.terms(high, output[committed], 1.0)
        lp.terms(high, on, -block.max_kw[committed])
        starting = lp.constraints((k, t), 0.0, INF)  # start[t] >= on[t] - on[t-1]
        lp.terms(starting, start, 1.0)
        lp.terms(starting, on, -1.0)
        lp.terms(starting[:, 1:], on[:, :-1], 1.0)
        up = block.min_up_intervals[committed]
        if np.any(up > 1):
            stay = lp.constraints((k, t), -INF, 0.0)  # started within min-up => on
            lp.terms(stay, on, -1.0)
            _window_sum(lp, stay, start, up, 1.0)
    built.add_power(offset + np.arange(n), output, -1.0)
    return offset + n


def _coupling(built: Built, elastic: bool, net_column: bool) -> None:
    p = built.problem
    lp = built.lp
    t = p.intervals
    e = len(p.enterprise_ids)
    asset_ent = p.asset_enterprise_index
    power_rows_asset = _cat_int(built.power_asset)
    power_rows_t = _cat_int(built.power_interval)
    power_cols = _cat_int(built.power_col)
    power_coef = _cat(built.power_coef)
    real = power_cols >= 0
    power_rows_asset, power_rows_t = power_rows_asset[real], power_rows_t[real]
    power_cols, power_coef = power_cols[real], power_coef[real]
    const_ent = np.zeros((e, t))
    np.add.at(const_ent, asset_ent, built.power_const)
    const_ent += p.enterprise_base_kw
    big = _penalty_kwh(p) * ELASTIC_FACTOR * p.horizon.hours

    # Enterprise connections: -export <= sum of power + base <= import.
    ent_rows = lp.constraints(
        (e, t),
        -p.enterprise_export_limit_kw[:, None] - const_ent,
        p.enterprise_import_limit_kw[:, None] - const_ent,
    )
    lp.terms(ent_rows[asset_ent[power_rows_asset], power_rows_t], power_cols, power_coef)
    built.enterprise_rows = ent_rows
    if elastic:
        over = lp.variables((e, t), 0.0, INF, big)
        under = lp.variables((e, t), 0.0, INF, big)
        lp.terms(ent_rows, over, -1.0)
        lp.terms(ent_rows, under, 1.0)
        built.hard.append(_Soft(ViolationKind.ENTERPRISE_IMPORT_LIMIT, p.enterprise_ids, over))
        built.hard.append(_Soft(ViolationKind.ENTERPRISE_EXPORT_LIMIT, p.enterprise_ids, under))

    # Park grid connection: sum of power + base = import - export.
    imp_cap = np.full(t, p.park_import_limit_kw)
    exp_cap = np.full(t, p.park_export_limit_kw)
    buy, sell = grid_costs(p)
    total_const = const_ent.sum(axis=0)
    grid = lp.constraints((t,), -total_const, -total_const)
    built.grid_rows = grid
    lp.terms(grid[power_rows_t], power_cols, power_coef)
    if net_column:
        imports = lp.variables((t,), 0.0, INF, buy)
        exports = lp.variables((t,), 0.0, INF, sell)
        net = lp.variables((t,), -exp_cap, imp_cap)
        lp.terms(grid, net, -1.0)
        link = lp.constraints((t,), 0.0, 0.0)
        lp.terms(link, net, 1.0)
        lp.terms(link, imports, -1.0)
        lp.terms(link, exports, 1.0)
        built.net_cols = net
    else:
        imports = lp.variables((t,), 0.0, imp_cap, buy)
        exports = lp.variables((t,), 0.0, exp_cap, sell)
        lp.terms(grid, imports, -1.0)
        lp.terms(grid, exports, 1.0)
    built.import_cols, built.export_cols = imports, exports
    if elastic:
        over = lp.variables((1, t), 0.0, INF, big)
        under = lp.variables((1, t), 0.0, INF, big)
        lp.terms(grid[None, :], over, -1.0)
        lp.terms(grid[None, :], under, 1.0)
        built.hard.append(_Soft(ViolationKind.PARK_IMPORT_LIMIT, ("park",), over))
        built.hard.append(_Soft(ViolationKind.PARK_EXPORT_LIMIT, ("park",), under))

    if p.target_kw is not None:
        active = np.flatnonzero(np.isfinite(p.target_kw))
        if active.size:
            goal = p.target_kw[active]
            rows = lp.constraints((1, active.size), goal[None, :], goal[None, :])
            per_kw = _penalty_kwh(p) * TARGET_WEIGHT * p.horizon.hours
            more = lp.variables((1, active.size), 0.0, INF, per_kw)
            less = lp.variables((1, active.size), 0.0, INF, per_kw)
            lp.terms(rows, imports[active][None, :], 1.0)
            lp.terms(rows, exports[active][None, :], -1.0)
            lp.terms(rows, more, 1.0)
            lp.terms(rows, less, -1.0)
            full_more = np.full((1, t), -1, dtype=np.int64)
            full_less = np.full((1, t), -1, dtype=np.int64)
            full_more[:, active] = more
            full_less[:, active] = less
            built.soft.append(_Soft(ViolationKind.TARGET, ("park",), full_more))
            built.soft.append(_Soft(ViolationKind.TARGET, ("park",), full_less))


def owed_cost(p: DispatchProblem) -> float:
    """Cost per kW·interval of rebound energy still owed at the end: bought after the
    horizon at the last interval's price."""
    return float(p.price_per_mwh[-1]) * _energy(p)


def reprice(built: Built, highs: highspy.Highs, problem: DispatchProblem) -> None:
    """Give a kept model the costs of `problem`'s prices: grid imports and exports, and the
    rebound energy owed at the end. Everything else in `problem` must be as it was built."""
    buy, sell = grid_costs(problem)
    cols = [built.import_cols, built.export_cols]
    costs = [buy, sell]
    if built.owed_cols.size:
        cols.append(built.owed_cols[:, -1])
        costs.append(np.full(built.owed_cols.shape[0], owed_cost(problem)))
    all_cols = _cat_int(cols).astype(np.int32)
    highs.changeColsCost(all_cols.size, all_cols, _cat(costs))
    built.problem = problem


def grid_costs(p: DispatchProblem) -> tuple[FloatArray, FloatArray]:
    """Cost per kW·interval of importing (energy and carbon) and of exporting (a revenue)."""
    t = p.intervals
    emission = p.grid_emission_kg_per_kwh if p.grid_emission_kg_per_kwh is not None else np.zeros(t)
    buy = (p.price_per_mwh + p.carbon_price_per_t * emission) * _energy(p)
    return buy, -p.export_price_per_mwh * _energy(p)


# --- running HiGHS ----------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One HiGHS run of a built model."""

    built: Built
    highs: highspy.Highs
    termination: Termination
    has_solution: bool
    x: FloatArray
    objective: float
    solver_s: float
    mip_gap: float | None
    marginal: Marginal | None = None  # of a relaxation (`Rounded.relax`)


def _highs(options: SolveOptions, time_limit_s: float | None = None) -> highspy.Highs:
    highs = highspy.Highs()  # type: ignore[no-untyped-call]
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("time_limit", float(time_limit_s or options.time_limit_s))
    highs.setOptionValue("mip_rel_gap", float(options.mip_gap))
    highs.setOptionValue("threads", int(options.threads))
    highs.setOptionValue("random_seed", 0)
    return highs


def set_time_limit(highs: highspy.Highs, deadline: float) -> None:
    """Let a kept HiGHS instance run until `deadline` (a `time.perf_counter` value).

    HiGHS measures its time limit against the instance's run time summed over all its runs,
    so a kept instance is given its past run time on top of the time left; otherwise it
    would stop early, with a feasible but unfinished plan, once it had run for the limit in
    total.
    """
    left = max(deadline - time.perf_counter(), 0.01)
    highs.setOptionValue("time_limit", float(highs.getRunTime()) + left)


_TERMINATION = {
    highspy.HighsModelStatus.kOptimal: Termination.OPTIMAL,
    highspy.HighsModelStatus.kInfeasible: Termination.INFEASIBLE,
    highspy.HighsModelStatus.kUnboundedOrInfeasible: Termination.INFEASIBLE,
    highspy.HighsModelStatus.kUnbounded: Termination.UNBOUNDED,
    highspy.HighsModelStatus.kTimeLimit: Termination.TIME_LIMIT,
    highspy.HighsModelStatus.kIterationLimit: Termination.ITERATION_LIMIT,
    highspy.HighsModelStatus.kInterrupt: Termination.INTERRUPTED,
    highspy.HighsModelStatus.kObjectiveBound: Termination.OPTIMAL,
    highspy.HighsModelStatus.kSolutionLimit: Termination.ITERATION_LIMIT,
}


def run(built: Built, options: SolveOptions, time_limit_s: float | None = None) -> Run:
    highs = _highs(options, time_limit_s)
    if not built.lp.has_integers:
        # These LPs are block-banded and already tight: presolve costs more than it saves
        # (about 3× the solve on a 50-asset part). MIPs keep it for their cuts.
        highs.setOptionValue("presolve", "off")
    started = time.perf_counter()
    built.lp.pass_to(highs)
    built.build_s += time.perf_counter() - started
    if built.lp.has_integers:
        _give_incumbent(built, highs, options)
    return _rerun(built, highs)


def _give_incumbent(built: Built, highs: highspy.Highs, options: SolveOptions) -> None:
    """Hand the MIP a good first schedule: round the LP relaxation's binaries (greedy run
    starts, commitments at one half), fix them and solve the LP that is left.

    These MIPs' relaxations are tight (a gap of about 1e-6 on the demo park), so with this
    incumbent HiGHS proves the gap at the root instead of searching sub-MIPs for seconds.
    """
    lp_solver = _highs(options)
    lp_solver.setOptionValue("presolve", "off")
    built.lp.pass_to(lp_solver, relaxed=True)
    lp_solver.run()
    if lp_solver.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return
    x = np.asarray(lp_solver.getSolution().col_value)
    marginal = built.marginal(lp_solver)
    cols = _cat_int([group.cols for group in built.rounding])
    values = _cat([group.round(x, marginal) for group in built.rounding])
    lp_solver.changeColsBounds(cols.size, cols.astype(np.int32), values, values)
    lp_solver.run()
    if lp_solver.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return
    start = highspy.HighsSolution()
    start.col_value = list(lp_solver.getSolution().col_value)
    start.value_valid = True
    highs.setSolution(start)


def _rerun(built: Built, highs: highspy.Highs) -> Run:
    started = time.perf_counter()
    highs.run()
    solver_s = time.perf_counter() - started
    status = highs.getModelStatus()
    termination = _TERMINATION.get(status, Termination.SOLVER_ERROR)
    info = highs.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(highs.getSolution().col_value) if has_solution else np.zeros(built.lp.n)
    gap = float(info.mip_gap) if built.lp.has_integers and has_solution else None
    objective = float(info.objective_function_value) if has_solution else float("nan")
    return Run(built, highs, termination, has_solution, x, objective, solver_s, gap)


def burning(
    problem: DispatchProblem,
    charge_kw: FloatArray,
    discharge_kw: FloatArray,
    exclusive: BoolArray | None,
) -> BoolArray | None:
    """Where batteries need a binary against charging and discharging at once, or None if
    the plan is physical as it stands.

    A battery that charges and discharges in the same interval burns energy in its losses,
    which pays when energy is worth less than nothing (negative prices, surplus behind an
    export limit). Each such interval, and every interval of that battery priced as low or
    lower, gets a binary — the plan would otherwise move the burning there.
    """
    block = problem.batteries
    if not block.asset_ids:
        return None
    scale = np.maximum(block.charge_max_kw.max(axis=1), 1e-9)[:, None]
    both = np.minimum(charge_kw, discharge_kw) > SIMULTANEOUS_TOLERANCE * scale
    current = np.zeros_like(both) if exclusive is None else exclusive
    new = both & ~current
    if not new.any():
        return None
    price = problem.price_per_mwh
    worst = np.where(new, price[None, :], -np.inf).max(axis=1)
    return np.asarray(current | new | (price[None, :] <= worst[:, None]))


def exclusive_split(problem: DispatchProblem, exclusive: BoolArray) -> tuple[BoolArray, BoolArray]:
    """(charge only, binary) parts of an `exclusive` mask.

    Where the price is negative, discharging only pays the buyer to take the energy: the
    battery may charge or idle, a bound rather than a binary. Elsewhere a binary chooses.
    """
    negative = (problem.price_per_mwh < 0)[None, :]
    return np.asarray(exclusive & negative), np.asarray(exclusive & ~negative)


def _burning(built: Built, x: FloatArray) -> BoolArray | None:
    if not built.problem.batteries.asset_ids:
        return None
    return burning(built.problem, x[built.charge_cols], x[built.discharge_cols], built.exclusive)


def schedule_of(built: Built, x: FloatArray) -> Schedule:
    p = built.problem
    soc = {a: x[built.soc_cols[i]] for i, a in enumerate(p.batteries.asset_ids)}
    temp = {a: x[built.temp_cols[i]] for i, a in enumerate(p.thermal.asset_ids)}
    return Schedule(p.asset_ids, p.horizon, built.power(x), soc, temp)


def violations(families: list[_Soft], x: FloatArray, tolerance: float = 1e-4) -> list[Violation]:
    found: list[Violation] = []
    for family in families:
        cols = family.cols.reshape(len(family.subjects), -1) if family.cols.size else family.cols
        if cols.size == 0:
            continue
        values = np.where(cols >= 0, x[np.maximum(cols, 0)], 0.0) * family.scale
        for i, subject in enumerate(family.subjects):
            hit = np.flatnonzero(values[i] > tolerance)
            if hit.size:
                found.append(
                    Violation(family.kind, subject, float(values[i].max()), int(hit[0]), hit.size)
                )
    return found


def _status(termination: Termination, has_solution: bool, proven: bool) -> Status:
    if has_solution:
        return Status.OPTIMAL if termination is Termination.OPTIMAL and proven else Status.FEASIBLE
    if termination in (Termination.INFEASIBLE, Termination.UNBOUNDED):
        return Status.INFEASIBLE if termination is Termination.INFEASIBLE else Status.ERROR
    if termination in (
        Termination.TIME_LIMIT,
        Termination.ITERATION_LIMIT,
        Termination.INTERRUPTED,
    ):
        return Status.NO_SOLUTION
    return Status.ERROR


def diagnose(problem: DispatchProblem, options: SolveOptions) -> Diagnosis:
    """Which hard limits no schedule can meet: the elastic model's positive slacks."""
    built = build(problem, elastic=True)
    result = run(built, replace(options, mip_gap=max(options.mip_gap, 0.01)))
    if not result.has_solution:
        return Diagnosis()
    return Diagnosis(
        hard=tuple(violations(built.hard, result.x)),
        soft=tuple(violations(built.soft, result.x)),
    )


def solve_physical(
    problem: DispatchProblem,
    options: SolveOptions,
    deadline: float,
    *,
    net_column: bool = False,
    net_bounds: tuple[FloatArray, FloatArray] | None = None,
    exclusive: BoolArray | None = None,
) -> tuple[Run, float, float]:
    """Solve; where batteries would charge and discharge at once they get binaries that
    forbid it (see `burning`) and the model is solved again. Returns the last run, build
    seconds and solver seconds."""
    build_s = solver_s = 0.0
    rebuild = True
    while True:
        if rebuild:
            built = build(problem, exclusive=exclusive, net_column=net_column)
            if net_bounds is not None:
                built.lp.set_bounds(built.net_cols, net_bounds[0], net_bounds[1])
            outcome = run(built, options, max(deadline - time.perf_counter(), 0.01))
            build_s += built.build_s
        else:
            outcome = _rerun(built, outcome.highs)
        solver_s += outcome.solver_s
        if not outcome.has_solution:
            return outcome, build_s, solver_s
        wider = _burning(built, outcome.x)
        if wider is None:
            return outcome, build_s, solver_s
        # Charge-only intervals are bounds: set them in place and re-solve from the basis.
        # New binaries need a new model.
        old_binary = (
            exclusive_split(problem, built.exclusive)[1] if built.exclusive is not None else None
        )
        only, binary = exclusive_split(problem, wider)
        rebuild = bool(binary.any()) and (old_binary is None or bool((binary & ~old_binary).any()))
        exclusive = wider
        if not rebuild:
            cols = built.discharge_cols[only].astype(np.int32)
            zeros = np.zeros(cols.size)
            outcome.highs.changeColsBounds(cols.size, cols, zeros, zeros)
            built.exclusive = wider


def solve_monolithic(problem: DispatchProblem, options: SolveOptions) -> Result:
    """One model of the whole problem.

    A MIP is first solved as a rounded relaxation (`Rounded`): a plan within the MIP gap of
    the relaxation needs no branch and bound. Otherwise the branch and bound runs, and the
    better of its plan and the rounded one is kept (HiGHS does not always keep the rounded
    plan it is given as a start), with its gap to the best bound known.
    """
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    first = build(problem)
    if not first.lp.has_integers:
        outcome, build_s, solver_s = solve_physical(problem, options, deadline)
        return finish(problem, options, outcome, started, build_s, solver_s)
    rounded = Rounded(first, options)
    rounded.set_time_limit(deadline)
    relaxed = rounded.relax()
    plan = rounded.physical(relaxed) if relaxed.has_solution else None
    build_s, solver_s = first.build_s, plan.solver_s if plan is not None else relaxed.solver_s
    usable = plan is not None and plan.has_solution
    if plan is not None and usable and (plan.mip_gap or 0.0) <= max(options.mip_gap, PROVEN_GAP):
        plan.mip_gap = 0.0
        return finish(
            problem, options, plan, started, build_s, solver_s, lower_bound=relaxed.objective
        )
    outcome, b, s = solve_physical(problem, options, deadline)
    build_s, solver_s = build_s + b, solver_s + s
    if (
        plan is not None
        and usable
        and (not outcome.has_solution or plan.objective < outcome.objective)
    ):
        bound = relaxed.objective
        if outcome.has_solution and outcome.built.lp.has_integers:
            bound = max(bound, float(outcome.highs.getInfo().mip_dual_bound))
        plan.mip_gap = max((plan.objective - bound) / max(abs(plan.objective), 1.0), 0.0)
        plan.termination = outcome.termination
        return finish(problem, options, plan, started, build_s, solver_s, lower_bound=bound)
    return finish(problem, options, outcome, started, build_s, solver_s)


class Rounded:
    """A built model kept in HiGHS as its LP relaxation, made physical by rounding.

    `relax()` solves the relaxation from the last basis: its optimum bounds the physical
    optimum from below. `physical(relaxed)` rounds its binaries (greedy run starts,
    commitments at one half, curtailment runs by `plant_runs`), fixes them and solves the LP
    that is left from the same basis; where a battery then charges and discharges at once,
    bounds forbid it (charge only at a negative price, else the way it mostly goes) and the
    LP is solved again. The gap between the two runs is the physical plan's proven gap
    (`Run.mip_gap`). Costs and net-power bounds may be changed in place between solves.
    """

    def __init__(self, built: Built, options: SolveOptions) -> None:
        self.built = built
        self.options = options
        self.highs = _highs(options)
        self.highs.setOptionValue("presolve", "off")  # see `run`
        started = time.perf_counter()
        built.lp.pass_to(self.highs, relaxed=True)
        built.build_s += time.perf_counter() - started
        lp = built.lp
        self._integer = _cat_int([group.cols for group in built.rounding]).astype(np.int32)
        self._integer_lower = _cat(lp.lower)[self._integer]
        self._integer_upper = _cat(lp.upper)[self._integer]

    def set_time_limit(self, deadline: float) -> None:
        set_time_limit(self.highs, deadline)

    def relax(self) -> Run:
        """Free the binaries, the runs and the batteries' direction; solve the relaxation."""
        self._free_batteries()
        self._set_runs(None)
        if self._integer.size:
            self.highs.changeColsBounds(
                self._integer.size, self._integer, self._integer_lower, self._integer_upper
            )
        relaxed = _rerun(self.built, self.highs)
        relaxed.marginal = self.built.marginal(self.highs)  # without it, runs cover reductions
        return relaxed

    def physical(self, relaxed: Run, *, priced: bool = True) -> Run:
        """A physical plan rounded from `relaxed` (a run of this model's relaxation): its
        curtailment runs worth the most at the relaxation's marginal prices, or, not
        `priced`, those covering its fractional runs (cheaper, and nearer the relaxation)."""
        self._free_batteries()  # of an earlier rounding
        outcome = relaxed
        solver_s = relaxed.solver_s
        marginal = relaxed.marginal if priced else None
        if self._integer.size:
            values = _cat([group.round(relaxed.x, marginal) for group in self.built.rounding])
            self.highs.changeColsBounds(self._integer.size, self._integer, values, values)
        if self.built.runs is not None:
            self._set_runs(self.built.runs.runs(relaxed.x, marginal))
        if self._integer.size or self.built.runs is not None:
            outcome = _rerun(self.built, self.highs)
            solver_s += outcome.solver_s
        outcome, extra_s = self._separated(outcome)
        if outcome.has_solution and relaxed.has_solution:
            gap = (outcome.objective - relaxed.objective) / max(abs(outcome.objective), 1.0)
            outcome.mip_gap = max(gap, 0.0)
        outcome.solver_s = solver_s + extra_s
        return outcome

    def again(self) -> Run:
        """Solve again with the binaries and runs as they are fixed (after a change of
        bounds or costs), keeping the plan physical. Its gap is unknown (None)."""
        outcome = _rerun(self.built, self.highs)
        solver_s = outcome.solver_s
        outcome, extra_s = self._separated(outcome)
        outcome.solver_s = solver_s + extra_s
        outcome.mip_gap = None
        return outcome

    def _separated(self, outcome: Run) -> tuple[Run, float]:
        """Re-solve until no battery charges and discharges at once; the extra seconds.

        Each round zeroes at least one more charge or discharge column (bounds only
        accumulate), so the rounds end within as many as there are such columns; on zero
        prices and no wear the burning can move to another interval round after round.
        """
        solver_s = 0.0
        for _ in range(self.built.charge_cols.size + self.built.discharge_cols.size + 1):
            if not outcome.has_solution or not self._separate(outcome.x):
                break
            outcome = _rerun(self.built, self.highs)
            solver_s += outcome.solver_s
        return outcome, solver_s

    def _set_runs(self, on: FloatArray | None) -> None:
        runs = self.built.runs
        if runs is None:
            return
        cols, lower, upper, rows, rows_upper = runs.bounds(on)
        cols32 = cols.astype(np.int32)
        self.highs.changeColsBounds(cols32.size, cols32, lower, upper)
        if rows.size:
            rows32 = rows.astype(np.int32)
            lower = np.full(rows32.size, -INF)
            # highspy has the batch call; its type stubs list only the one-row form.
            self.highs.changeRowsBounds(  # type: ignore[attr-defined]
                rows32.size, rows32, lower, rows_upper
            )

    def _free_batteries(self) -> None:
        """Lift the bounds an earlier plan put on batteries' charge or discharge."""
        block = self.built.problem.batteries
        if not block.asset_ids:
            return
        cols = np.concatenate([self.built.charge_cols.ravel(), self.built.discharge_cols.ravel()])
        upper = np.concatenate([block.charge_max_kw.ravel(), block.discharge_max_kw.ravel()])
        self.highs.changeColsBounds(cols.size, cols.astype(np.int32), np.zeros(cols.size), upper)

    def _separate(self, x: FloatArray) -> bool:
        """Forbid charging and discharging at once where plan x does it; False if it does not."""
        problem = self.built.problem
        block = problem.batteries
        if not block.asset_ids:
            return False
        charge = x[self.built.charge_cols]
        discharge = x[self.built.discharge_cols]
        scale = np.maximum(block.charge_max_kw.max(axis=1), 1e-9)[:, None]
        both = np.minimum(charge, discharge) > SIMULTANEOUS_TOLERANCE * scale
        if not both.any():
            return False
        # At a negative price discharging only pays the buyer: the battery charges or idles
        # there and wherever it is priced as low or lower, so the burning cannot move there.
        price = problem.price_per_mwh
        worst = np.where(both & (price[None, :] < 0), price[None, :], -np.inf).max(axis=1)
        negative = (price[None, :] < 0) & (price[None, :] <= worst[:, None])
        stop_discharge = negative | (both & (charge >= discharge))
        stop_charge = both & ~stop_discharge
        cols = np.concatenate(
            [self.built.discharge_cols[stop_discharge], self.built.charge_cols[stop_charge]]
        ).astype(np.int32)
        zeros = np.zeros(cols.size)
        self.highs.changeColsBounds(cols.size, cols, zeros, zeros)
        return True


class PriceSweep:
    """One problem solved at many prices (bid curve scenarios), each solve cheap.

    The model is built once and kept as a `Rounded` relaxation with its basis. At each price
    the costs change (`reprice`), the relaxation is solved and rounded to a physical plan,
    both from the last basis. Within `options.mip_gap` of the relaxation (on the demo park
    about 0.003 %) the plan is optimal, else feasible with its gap known (a branch and bound
    to prove a fraction of a percent costs seconds per scenario); when the LP finds no
    schedule the scenario is solved as a MIP (`solve_monolithic`).

    `problem`'s prices may change between solves, nothing else (the penalty included).
    """

    def __init__(self, problem: DispatchProblem, options: SolveOptions) -> None:
        self.problem = problem
        self.options = options
        self.model = Rounded(build(problem, runs_as_bounds=options.runs_as_bounds), options)
        self.fallbacks = 0  # scenarios that needed the MIP
        self._build_s = self.model.built.build_s  # reported with the first solve

    def solve(
        self, price_per_mwh: FloatArray, export_price_per_mwh: FloatArray | None = None
    ) -> Result:
        started = time.perf_counter()
        problem = self.problem.with_prices(price_per_mwh, export_price_per_mwh)
        if problem.penalty_per_mwh != self.problem.penalty_per_mwh:
            raise ValueError("PriceSweep: the prices change the soft-target penalty; fix it first")
        model = self.model
        model.set_time_limit(started + self.options.time_limit_s)
        reprice(model.built, model.highs, problem)
        relaxed = model.relax()
        if not relaxed.has_solution:
            return self._fallback(problem, started)
        outcome = model.physical(relaxed)
        if not outcome.has_solution:
            return self._fallback(problem, started)
        if (outcome.mip_gap or 0.0) <= PROVEN_GAP:
            outcome.mip_gap = 0.0
        build_s, self._build_s = self._build_s, 0.0
        return finish(problem, self.options, outcome, started, build_s, outcome.solver_s)

    def _fallback(self, problem: DispatchProblem, started: float) -> Result:
        self.fallbacks += 1
        left = self.options.time_limit_s - (time.perf_counter() - started)
        return solve_monolithic(problem, replace(self.options, time_limit_s=max(left, 1.0)))


def finish(
    problem: DispatchProblem,
    options: SolveOptions,
    outcome: Run,
    started: float,
    build_s: float,
    solver_s: float,
    *,
    subproblems: int = 1,
    method: str = "monolithic",
    lower_bound: float | None = None,
) -> Result:
    built = outcome.built
    diagnosis: Diagnosis | None = None
    if outcome.has_solution:
        soft = violations(built.soft, outcome.x)
        diagnosis = Diagnosis(soft=tuple(soft)) if soft else None
        schedule: Schedule | None = schedule_of(built, outcome.x)
        objective: float | None = outcome.objective
    else:
        schedule, objective = None, None
        if outcome.termination is Termination.INFEASIBLE and options.diagnose:
            diagnosis = diagnose(problem, options)
    proven = outcome.mip_gap is None or outcome.mip_gap <= options.mip_gap + 1e-9
    stats = SolveStats(
        wall_s=time.perf_counter() - started,
        build_s=build_s,
        solver_s=solver_s,
        variables=built.lp.n,
        constraints=built.lp.m,
        integer_variables=int(_cat(built.lp.integer).sum()),
        subproblems=subproblems,
        lower_bound=lower_bound,
        method=method,
    )
    status = _status(outcome.termination, outcome.has_solution, proven)
    return Result(status, outcome.termination, schedule, objective, stats, diagnosis)


# --- decomposition by enterprise --------------------------------------------------------------


def enterprise_groups(problem: DispatchProblem, assets_per_group: int) -> list[IntArray]:
    """Consecutive enterprises gathered until a group holds about `assets_per_group` assets."""
    counts = np.bincount(problem.asset_enterprise_index, minlength=len(problem.enterprise_ids))
    groups: list[IntArray] = []
    current: list[int] = []
    size = 0
    for e, count in enumerate(counts):
        if current and size + count > assets_per_group:
            groups.append(np.array(current, dtype=np.int64))
            current, size = [], 0
        current.append(e)
        size += int(count)
    if current:
        groups.append(np.array(current, dtype=np.int64))
    return groups


@dataclass(frozen=True, slots=True)
class PartPlan:
    """What sharing the park limit needs of a part's last plan (small: it may cross the
    network)."""

    has_solution: bool
    termination: Termination
    objective: float  # of the physical plan, its net power unpriced
    net_kw: FloatArray  # the part's net power per interval
    relaxed_objective: float  # of its last relaxation (-inf: none)
    solver_s: float  # HiGHS seconds of the call that returned this plan
    build_s: float = 0.0  # model generation seconds of that call


@dataclass(frozen=True, slots=True)
class PartReport:
    """A part's plan as the park's result takes it (`power_kw` rows follow its assets)."""

    power_kw: FloatArray | None  # None without a plan
    soc_kwh: dict[str, FloatArray]
    temperature_c: dict[str, FloatArray]
    violations: tuple[Violation, ...]
    objective: float
    termination: Termination
    variables: int
    constraints: int
    integer_variables: int


class PartModel:
    """One part's model and its last plan, kept where they were built (a thread of this
    process or a Dask worker) across the coordination passes and the re-solves at new prices.

    Each method is one step of `Decomposed` for this part. Arguments and results are small
    and picklable; `deadline` is wall-clock time (`time.time()`), so a part on another
    machine stops when the park's solve must (the machines' clocks kept in step by NTP).
    """

    def __init__(self, problem: DispatchProblem, options: SolveOptions) -> None:
        self.problem = problem
        self.options = options
        self._model: Rounded | None = None
        self._outcome: Run | None = None
        self._relaxed: Run | None = None  # its last relaxation

    def first(self, deadline: float) -> PartPlan:
        """Build the model and relax it alone, allowed the whole park limit; its plan is the
        relaxation until `round`."""
        built = build(self.problem, net_column=True, runs_as_bounds=self.options.runs_as_bounds)
        self._model = Rounded(built, self.options)
        self._relax(deadline)
        return self._plan(self.outcome.solver_s, built.build_s)

    def round(self, priced: bool, deadline: float) -> PartPlan:
        """Round the relaxation `first` solved to a physical plan (`Rounded.physical`)."""
        set_time_limit(self.model.highs, _perf_deadline(deadline))
        self._round(priced)
        return self._plan(self.outcome.solver_s - self.relaxation.solver_s)

    def again(
        self,
        price_per_mwh: FloatArray,
        export_price_per_mwh: FloatArray | None,
        lower: FloatArray,
        upper: FloatArray,
        deadline: float,
    ) -> PartPlan:
        """Plan again at new prices within net-power bounds, from the last basis."""
        self.problem = self.problem.with_prices(price_per_mwh, export_price_per_mwh)
        model = self.model
        reprice(model.built, model.highs, self.problem)
        self._set_net_bounds(lower, upper)
        self._relax_and_round(deadline)
        return self._plan(self.outcome.solver_s)

    def within(self, lower: FloatArray, upper: FloatArray, deadline: float) -> PartPlan:
        """Plan within a share of the park limits (net-power bounds), from the last basis,
        with its binaries and runs as they are; if that has no plan, round its relaxation
        within the share. A plan that fits its share stands: still the best it can do."""
        outcome, model = self.outcome, self.model
        net = self.net_kw()
        self._set_net_bounds(lower, upper)
        if np.all(net <= upper + 1e-9) and np.all(net >= lower - 1e-9) and outcome.has_solution:
            return self._plan(0.0)
        set_time_limit(model.highs, _perf_deadline(deadline))
        rerun = model.again()
        seconds = rerun.solver_s
        if not rerun.has_solution:
            relaxed = model.relax()
            rerun = model.physical(relaxed) if relaxed.has_solution else relaxed
            seconds += rerun.solver_s
        self._outcome = rerun
        return self._plan(seconds)

    def priced(self, lower: FloatArray, upper: FloatArray, deadline: float) -> PartPlan:
        """Plan its relaxation (net power as priced) within net-power bounds and round it."""
        self._set_net_bounds(lower, upper)
        self._relax_and_round(deadline)
        return self._plan(self.outcome.solver_s)

    def price_net(self, mu: FloatArray) -> None:
        """Cost the net power at `mu` per kW·interval."""
        cols = self.model.built.net_cols.astype(np.int32)
        self.model.highs.changeColsCost(cols.size, cols, mu)

    def unprice(self, mu: FloatArray) -> PartPlan:
        """Drop the price `mu` on net power, from the model and from its plan's objective."""
        self.price_net(np.zeros(self.problem.intervals))
        outcome = self.outcome
        if outcome.has_solution:
            outcome.objective -= float(mu @ self.net_kw())
        return self._plan(0.0)

    def net_kw(self) -> FloatArray:
        return np.asarray(self.outcome.x[self.outcome.built.net_cols])

    def net_duals(self) -> FloatArray:
        """Reduced costs of the net-power column in the last solve."""
        reduced = np.asarray(self.model.highs.getSolution().col_dual)
        return np.asarray(reduced[self.model.built.net_cols])

    def report(self) -> PartReport:
        outcome = self.outcome
        built = outcome.built
        lp = built.lp
        power: FloatArray | None = None
        soc: dict[str, FloatArray] = {}
        temp: dict[str, FloatArray] = {}
        soft: tuple[Violation, ...] = ()
        if outcome.has_solution:
            schedule = schedule_of(built, outcome.x)
            power = schedule.power_kw
            soc, temp = dict(schedule.soc_kwh), dict(schedule.temperature_c)
            soft = tuple(violations(built.soft, outcome.x))
        return PartReport(
            power,
            soc,
            temp,
            soft,
            outcome.objective,
            outcome.termination,
            lp.n,
            lp.m,
            int(_cat(lp.integer).sum()),
        )

    @property
    def model(self) -> Rounded:
        if self._model is None:
            raise RuntimeError("PartModel: call first() before anything else")
        return self._model

    @property
    def outcome(self) -> Run:
        if self._outcome is None:
            raise RuntimeError("PartModel: call first() before anything else")
        return self._outcome

    @property
    def relaxation(self) -> Run:
        if self._relaxed is None:
            raise RuntimeError("PartModel: call first() before anything else")
        return self._relaxed

    def _relax(self, deadline: float) -> None:
        """Solve the relaxation; it is the plan until `_round`."""
        set_time_limit(self.model.highs, _perf_deadline(deadline))
        self._outcome = self._relaxed = self.model.relax()

    def _round(self, priced: bool = True) -> None:
        relaxed = self.relaxation
        if relaxed.has_solution:
            self._outcome = self.model.physical(relaxed, priced=priced)

    def _relax_and_round(self, deadline: float) -> None:
        self._relax(deadline)
        self._round()

    def _set_net_bounds(self, lower: FloatArray, upper: FloatArray) -> None:
        """Set the part's share of the park limits (bounds of its net power column)."""
        cols = self.model.built.net_cols.astype(np.int32)
        self.model.highs.changeColsBounds(cols.size, cols, lower, upper)

    def _plan(self, solver_s: float, build_s: float = 0.0) -> PartPlan:
        outcome, relaxed = self.outcome, self.relaxation
        net = self.net_kw() if outcome.has_solution else np.zeros(self.problem.intervals)
        return PartPlan(
            outcome.has_solution,
            outcome.termination,
            outcome.objective,
            net,
            relaxed.objective if relaxed.has_solution else -np.inf,
            solver_s,
            build_s,
        )


def _perf_deadline(deadline: float) -> float:
    """A wall-clock deadline as a `time.perf_counter` value, which HiGHS limits are set by."""
    return time.perf_counter() + (deadline - time.time())


@dataclass(slots=True)
class Part:
    """One sub-problem as the coordination sees it: whole enterprises, with the park's net
    power in its own column; its model lives in the fan-out (`PartModel`)."""

    problem: DispatchProblem
    rows: IntArray  # rows of its assets in the full problem's schedule
    low_kw: FloatArray  # loosest net power per interval
    high_kw: FloatArray
    plan: PartPlan | None = None  # its last plan

    @property
    def net_kw(self) -> FloatArray:
        assert self.plan is not None
        return self.plan.net_kw


def split_parts(problem: DispatchProblem, assets_per_part: int) -> list[Part]:
    """The problem's parts: whole enterprises, about `assets_per_part` assets each."""
    row_of = {a: i for i, a in enumerate(problem.asset_ids)}
    low, high = power_range_kw(problem)
    ent = problem.asset_enterprise_index
    parts: list[Part] = []
    for group in enterprise_groups(problem, assets_per_part):
        sub = select_enterprises(problem, group.tolist())
        rows = np.array([row_of[a] for a in sub.asset_ids], dtype=np.int64)
        inside = np.isin(ent, group)
        base = problem.enterprise_base_kw[group].sum(axis=0)
        parts.append(
            Part(sub, rows, low[inside].sum(axis=0) + base, high[inside].sum(axis=0) + base)
        )
    return parts


class Decomposed:
    """A large problem as sub-problems of whole enterprises, coupled only by the park limits.

    Each part is a `Rounded` model (in a `PartModel`): its relaxation is solved alone,
    allowed the whole park limit, and rounded to a physical plan. If the parts together keep
    within the limit, their plans stand and the relaxations' optima add up to a lower bound.
    Otherwise the park limit is shared out in the intervals where it binds — a part's share is
    its own plan plus a slice of the excess (or spare) in proportion to how far it can move —
    and the parts are solved again from their previous basis (see `_coordinate`). The models
    are kept, so a re-solve at new prices only changes costs (`resolve`).

    The models live in a fan-out (`dispatch.fanout`): on `options.workers` threads here (HiGHS
    releases the interpreter while it runs), or, with `options.dask_scheduler` or a `client`,
    as Dask actors on the cluster's workers. Either way the same steps run on the same models,
    so the plans are the same. `close()` lets the models go.
    """

    def __init__(
        self, problem: DispatchProblem, options: SolveOptions, *, client: Client | None = None
    ) -> None:
        self.problem = problem
        self.options = options
        self.client = client
        self.parts = split_parts(problem, options.chunk_assets)
        self.shared = False  # whether the last solve had to share the park limit out
        self.bound: float | None = None  # a lower bound on the optimum, from the last solve
        self.mu: FloatArray | None = None  # the park limit's price, when it last bound
        # Each part's model solves on one thread; parts spread over the fan-out.
        self._part_options = replace(options, threads=1)
        self._models: Parts[PartModel] | None = None  # made by `solve`

    def close(self) -> None:
        """Let the parts' models go (on a Dask cluster: release the actors)."""
        if self._models is not None:
            self._models.close()
            self._models = None

    def _start_models(self) -> Parts[PartModel]:
        self.close()
        made = [(part.problem, self._part_options) for part in self.parts]
        client = self.client
        if client is None and self.options.dask_scheduler is not None:
            client = dask_client(self.options.dask_scheduler)
        if client is not None:
            return DaskParts(client, PartModel, made)
        return ThreadParts([PartModel(*args) for args in made], self.options.workers)

    def _each(self, call: Callable[[int, PartModel], PartPlan]) -> list[PartPlan]:
        """`call(k, model)` for every part k at once; keeps and returns their plans."""
        assert self._models is not None
        plans = self._models.each(call)
        for part, plan in zip(self.parts, plans, strict=True):
            part.plan = plan
        return plans

    def solve(self) -> Result:
        started = time.perf_counter()
        deadline = time.time() + self.options.time_limit_s
        self._models = self._start_models()
        plans = self._each(lambda _, model: model.first(deadline))
        build_s = sum(plan.build_s for plan in plans)
        solver_s = self._plans_solver_s()
        failed = self._any_failed(started, build_s, solver_s)
        if failed is not None:
            return failed
        # Where the relaxations together exceed the park limit, the plans rounded from them
        # only start the sharing of the limit (`_coordinate`): runs covering the relaxation's
        # are enough, and cheaper. Plans that may stand get the runs worth the most.
        starting = self.options.refine_shares and self._exceeds(self._total())
        self._each(lambda _, model: model.round(not starting, deadline))
        solver_s += self._plans_solver_s()
        if starting and not self._exceeds(self._total()):
            self._each(lambda _, model: model.round(True, deadline))  # they stand after all
            solver_s += self._plans_solver_s()
        return self._after_alone(started, deadline, build_s, solver_s)

    def _after_alone(
        self, started: float, deadline: float, build_s: float, solver_s: float
    ) -> Result:
        failed = self._any_failed(started, build_s, solver_s)
        if failed is not None:
            return failed
        # Alone, each part relaxes the park's problem: together they bound it from below.
        self.bound = float(sum(self._relaxed_objectives()))
        return self._coordinate(started, deadline, build_s, solver_s)

    def _any_failed(self, started: float, build_s: float, solver_s: float) -> Result | None:
        for k, part in enumerate(self.parts):
            assert part.plan is not None
            if not part.plan.has_solution:
                return self._failed(k, started, build_s, solver_s)
        return None

    def _total(self) -> FloatArray:
        """The parts' plans' net power together."""
        return np.asarray(np.sum([part.net_kw for part in self.parts], axis=0))

    def _exceeds(self, total: FloatArray) -> bool:
        """Whether the parts' net power `total` breaks the park limits."""
        p = self.problem
        lower, upper = self._full_limits()
        tolerance = 1e-6 * max(p.park_import_limit_kw, p.park_export_limit_kw, 1.0)
        return bool(np.any(total > upper + tolerance) or np.any(total < lower - tolerance))

    def _failed(self, k: int, started: float, build_s: float, solver_s: float) -> Result:
        """A part alone, allowed the whole park limit, has no schedule: the park has none
        either (infeasible: the part's own limits are at fault), or time ran out."""
        part = self.parts[k]
        assert part.plan is not None
        if part.plan.termination is Termination.INFEASIBLE:
            # The relaxation is infeasible: so is the part. Let the monolithic path say why.
            return solve_monolithic(part.problem, self.options)
        report = self._reports()[k]
        stats = SolveStats(
            wall_s=time.perf_counter() - started,
            build_s=build_s,
            solver_s=solver_s,
            variables=report.variables,
            constraints=report.constraints,
            integer_variables=report.integer_variables,
            subproblems=len(self.parts),
            method="decomposed",
        )
        status = _status(report.termination, False, proven=True)
        return Result(status, report.termination, None, None, stats)

    def _whole(self, started: float) -> Result:
        """Shares that did not work out: solve the whole problem in the time that is left."""
        left = self.options.time_limit_s - (time.perf_counter() - started)
        return solve_monolithic(self.problem, replace(self.options, time_limit_s=max(left, 1.0)))

    def resolve(
        self, price_per_mwh: FloatArray, export_price_per_mwh: FloatArray | None = None
    ) -> Result:
        """Solve again at new prices, from the kept models and their last basis."""
        started = time.perf_counter()
        deadline = time.time() + self.options.time_limit_s
        old_problem = self.problem
        self.problem = self.problem.with_prices(price_per_mwh, export_price_per_mwh)
        if self.problem.penalty_per_mwh != old_problem.penalty_per_mwh:
            # Penalties follow the largest price and sit in every part's costs: rebuild.
            self.parts = split_parts(self.problem, self.options.chunk_assets)
            return self.solve()
        for part in self.parts:
            part.problem = part.problem.with_prices(price_per_mwh, export_price_per_mwh)
        lower, upper = self._full_limits()
        # Where the park limit bound at the last prices, price it as it was priced then: the
        # Lagrangian relaxation at that price bounds the optimum, and its plans are the
        # starting point of the sharing, which spares the first two passes of `_coordinate`.
        mu = self.mu

        def again(_: int, model: PartModel) -> PartPlan:
            return model.again(price_per_mwh, export_price_per_mwh, lower, upper, deadline)

        if mu is None:
            self._each(again)
            return self._after_alone(started, deadline, 0.0, self._plans_solver_s())
        self._price_net(mu)
        self._each(again)
        solver_s = self._plans_solver_s()
        for k, part in enumerate(self.parts):
            assert part.plan is not None
            if not part.plan.has_solution:
                self._price_net(np.zeros(self.problem.intervals))
                return self._failed(k, started, 0.0, solver_s)
        self.bound = self._lagrangian(mu, lower, upper)
        self._unprice(mu)
        return self._coordinate(started, deadline, 0.0, solver_s, priced=True)

    def _full_limits(self) -> tuple[FloatArray, FloatArray]:
        t = self.problem.intervals
        return (
            np.full(t, -self.problem.park_export_limit_kw),
            np.full(t, self.problem.park_import_limit_kw),
        )

    def _coordinate(
        self,
        started: float,
        deadline: float,
        build_s: float,
        solver_s: float,
        *,
        priced: bool = False,
    ) -> Result:
        """Plans that keep the park limits together: as they are when they do; else shared
        out (`priced`: the plans are already the rounded Lagrangian relaxation's)."""
        lower, upper = self._full_limits()
        total = self._total()
        self.shared = self._exceeds(total)
        if not self.shared:
            if not priced:
                self.mu = None
            return self._assemble(started, build_s, solver_s)
        if not priced:
            # 1. Share the limit out in proportion to how far each part can move.
            solver_s += self._solve_within(self._shares(total, lower, upper), deadline)
        if self.options.refine_shares and not priced:
            # 2. Price the park's net power at the limit's marginal value (the mean over the
            # parts of what a kW more of share is worth to them) and solve each part's
            # relaxation alone: a Lagrangian relaxation, so it bounds the optimum from below.
            # Each is rounded to a physical plan around which
            mu = self._marginal_values()
            self._price_net(mu)
            solver_s += self._relaxed(lower, upper, deadline)
            bound = self._lagrangian(mu, lower, upper)
            self.bound = max(self.bound if self.bound is not None else -np.inf, bound)
            self._unprice(mu)
            self.mu = mu
            priced = True
        if priced:
            # 3. the limit is shared out again, unpriced, and the parts solved within it.
            solver_s += self._solve_within(self._shares(self._total(), lower, upper), deadline)
        if any(part.plan is None or not part.plan.has_solution for part in self.parts):
            return self._whole(started)
        if self._exceeds(self._total()):
            return self._whole(started)
        return self._assemble(started, build_s, solver_s)

    def _solve_within(self, shares: list[tuple[FloatArray, FloatArray]], deadline: float) -> float:
        """Re-solve every part within its share of the park limits (`PartModel.within`).
        Returns solver seconds."""
        plans = self._each(lambda k, model: model.within(*shares[k], deadline))
        return float(sum(plan.solver_s for plan in plans))

    def _marginal_values(self) -> FloatArray:
        """Mean over the parts of the reduced cost of their net power column, sign flipped:
        > 0 where more import share would save money, < 0 where more export share would."""
        assert self._models is not None
        duals = self._models.each(lambda _, model: model.net_duals())
        return np.asarray(-np.mean(np.array(duals), axis=0))

    def _price_net(self, mu: FloatArray) -> None:
        assert self._models is not None
        self._models.each(lambda _, model: model.price_net(mu))

    def _relaxed(self, lower: FloatArray, upper: FloatArray, deadline: float) -> float:
        """Solve every part's relaxation (its net power as priced) within the whole park
        limit and round it to a physical plan; the solver seconds."""
        plans = self._each(lambda _, model: model.priced(lower, upper, deadline))
        return float(sum(plan.solver_s for plan in plans))

    def _lagrangian(self, mu: FloatArray, lower: FloatArray, upper: FloatArray) -> float:
        """The Lagrangian bound of relaxations solved with the net power priced at `mu`."""
        limit = float(np.sum(np.maximum(mu, 0) * upper) - np.sum(np.maximum(-mu, 0) * lower))
        return float(sum(self._relaxed_objectives())) - limit

    def _unprice(self, mu: FloatArray) -> None:
        """Drop the price on net power, from the models and from their plans' objectives."""
        self._each(lambda _, model: model.unprice(mu))

    def _relaxed_objectives(self) -> list[float]:
        return [part.plan.relaxed_objective for part in self.parts if part.plan is not None]

    def _plans_solver_s(self) -> float:
        return float(sum(part.plan.solver_s for part in self.parts if part.plan is not None))

    def _reports(self) -> list[PartReport]:
        assert self._models is not None
        return self._models.each(lambda _, model: model.report())

    def _shares(
        self, total: FloatArray, lower: FloatArray, upper: FloatArray
    ) -> list[tuple[FloatArray, FloatArray]]:
        nets = np.array([part.net_kw for part in self.parts])
        lows = np.array([part.low_kw for part in self.parts])
        highs = np.array([part.high_kw for part in self.parts])
        down_room = np.maximum(nets - lows, 0.0)
        up_room = np.maximum(highs - nets, 0.0)

        def weights(room: FloatArray) -> FloatArray:
            sums = room.sum(axis=0)
            even = np.full_like(room, 1.0 / room.shape[0])
            return np.where(sums > 0, room / np.where(sums > 0, sums, 1.0), even)

        spare_up = upper - total  # < 0 where the import limit is exceeded
        spare_down = total - lower  # < 0 where the export limit is exceeded
        cap_hi = nets + spare_up * weights(np.where(spare_up < 0, down_room, up_room))
        cap_lo = nets - spare_down * weights(np.where(spare_down < 0, up_room, down_room))
        cap_lo = np.minimum(cap_lo, cap_hi)
        return [(cap_lo[k], cap_hi[k]) for k in range(len(self.parts))]

    def _assemble(self, started: float, build_s: float, solver_s: float) -> Result:
        p = self.problem
        power = np.zeros((len(p.asset_ids), p.intervals))
        soc: dict[str, FloatArray] = {}
        temp: dict[str, FloatArray] = {}
        soft: list[Violation] = []
        objective = 0.0
        variables = constraints = integers = 0
        reports = self._reports()
        for part, report in zip(self.parts, reports, strict=True):
            assert report.power_kw is not None
            power[part.rows] = report.power_kw
            soc.update(report.soc_kwh)
            temp.update(report.temperature_c)
            soft.extend(report.violations)
            objective += report.objective
            variables += report.variables
            constraints += report.constraints
            integers += report.integer_variables
        # Optimal when the plans are within the gap of the bound: then nothing was shared out
        # and each part nets its imports and exports the way the park would (same price).
        exact = not self.shared and bool(np.all(p.export_price_per_mwh == p.price_per_mwh))
        bound = self.bound
        gap = (objective - bound) / max(abs(objective), 1.0) if bound is not None else np.inf
        proven = exact and gap <= max(self.options.mip_gap, PROVEN_GAP)
        status = Status.OPTIMAL if proven else Status.FEASIBLE
        stats = SolveStats(
            wall_s=time.perf_counter() - started,
            build_s=build_s,
            solver_s=solver_s,
            variables=variables,
            constraints=constraints,
            integer_variables=integers,
            subproblems=len(self.parts),
            lower_bound=bound,
            method="decomposed",
        )
        schedule = Schedule(p.asset_ids, p.horizon, power, soc, temp)
        diagnosis = Diagnosis(soft=tuple(soft)) if soft else None
        stopped = [
            report.termination
            for report in reports
            if report.termination is not Termination.OPTIMAL
        ]
        termination = stopped[0] if stopped else Termination.OPTIMAL
        return Result(status, termination, schedule, objective, stats, diagnosis)


def solve_decomposed(problem: DispatchProblem, options: SolveOptions) -> Result:
    """Solve by parts of whole enterprises (see `Decomposed`)."""
    if problem.target_kw is not None and np.any(np.isfinite(problem.target_kw)):
        return solve_monolithic(problem, options)  # a target couples every asset
    decomposed = Decomposed(problem, options)
    if len(decomposed.parts) == 1:
        return solve_monolithic(problem, options)
    try:
        return decomposed.solve()
    finally:
        decomposed.close()
