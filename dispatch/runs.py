"""On/off runs of curtailable process loads under the plant's rules, by dynamic programming.

The plant (adapters/sim.py, `CurtailableLoadModel`) runs a load's reductions in runs of at
most `duration` intervals: a run that lasts that long is released and rests `forced_rest`
intervals, one released earlier rests `rest` (at least one interval either way). The rebound of
a reduction is owed and drawn back outside the runs, at most `draw_max_kw` an interval, within
the rebound window: nothing may be owed `window` intervals after the last reduction. The horizon
starts outside a run with nothing owed.

`plant_runs` picks the runs that collect the most of a given worth per interval (the
relaxation's fractional reductions). `priced_runs` picks the runs worth the most money at given
prices: the reduction saved, less the load's cost and what repaying its rebound costs, with the
owed energy as a state in steps of about a third of an interval's full rebound. The linear
program that receives the runs then sets the depths and draws exactly. That programme has
thousands of states per load and interval, so it is compiled (numba, on first use) and runs
load by load without the interpreter's lock: parts solved on threads round their loads at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: A load in a run reduces by at least this share of its reduction limit.
RUN_MIN_DEPTH = 0.01
#: Owed energy is tracked in steps of about this share of an interval's full-depth reduction
#: (the rebound of one interval at full depth is a whole number of steps).
OWED_STEP_SHARE = 1.0 / 3.0
#: The most a load may owe, in full-depth runs of its longest duration.
OWED_CAP_RUNS = 2.0
#: ... in at most this many steps.
OWED_MAX_STEPS = 96
_NEG = -np.inf


@dataclass(frozen=True, slots=True)
class PlantRules:
    """Run rules of k loads (arrays of k)."""

    duration: IntArray  # longest run before a forced release
    rest: IntArray  # rest after a release
    forced_rest: IntArray  # rest after a forced release


@dataclass(frozen=True, slots=True)
class Rebound:
    """Rebound terms of the same k loads (fraction 0: none)."""

    fraction: npt.NDArray[np.float64]
    window: IntArray  # intervals after the last reduction by which all is repaid
    draw_max_kw: npt.NDArray[np.float64]


def plant_runs(worth: FloatArray, rules: PlantRules) -> FloatArray:
    """On/off per load and interval maximising the summed `worth` of the intervals on, under
    the plant's rules, by dynamic programming over the plant's states: 0 idle, 1..L running
    for that many intervals, L + r resting r more intervals (L the longest run)."""
    k, t = worth.shape
    duration = np.minimum(rules.duration, t)  # one for all (see `priced_runs`)
    longest = int(duration.max(initial=1))
    resting = int(max(rules.rest.max(initial=0), rules.forced_rest.max(initial=0), 1))
    states = 1 + longest + resting
    rows = np.arange(k)
    # Where a release leads: rest - 1 more intervals after this one (0 = idle again).
    after_release = np.where(rules.rest > 1, longest + rules.rest - 1, 0)
    after_forced = np.where(rules.forced_rest > 1, longest + rules.forced_rest - 1, 0)
    runs = np.arange(1, longest + 1)
    shorter = runs[None, :] < duration[:, None]  # (k, L): may grow, or end voluntarily
    value = np.full((k, states), _NEG)
    value[:, 0] = 0.0
    came_from = np.zeros((t, k, states), dtype=np.int32)
    for step in range(t):
        new = np.full((k, states), _NEG)
        source = np.zeros((k, states), dtype=np.int32)
        # Idle: stay idle, or end a rest.
        from_rest = value[:, longest + 1] > value[:, 0]
        new[:, 0] = np.where(from_rest, value[:, longest + 1], value[:, 0])
        source[:, 0] = np.where(from_rest, longest + 1, 0)
        # Resting: count down.
        new[:, longest + 1 : states - 1] = value[:, longest + 2 :]
        source[:, longest + 1 : states - 1] = np.arange(longest + 2, states)
        # Running: start, or go on while shorter than the duration.
        new[:, 1] = value[:, 0] + worth[:, step]
        source[:, 1] = 0
        if longest > 1:
            grow = np.where(shorter[:, :-1], value[:, 1:longest], _NEG)
            new[:, 2 : longest + 1] = grow + worth[:, step, None]
            source[:, 2 : longest + 1] = np.arange(1, longest)
        # Releases: a shorter run voluntarily, a full one forced.
        running = value[:, 1 : longest + 1]
        early = np.where(shorter, running, _NEG)
        best = np.argmax(early, axis=1)
        for target, candidate, origin in (
            (after_release, early[rows, best], best + 1),
            (after_forced, running[rows, duration - 1], duration),
        ):
            better = candidate > new[rows, target]
            new[rows[better], target[better]] = candidate[better]
            source[rows[better], target[better]] = origin[better]
        value = new
        came_from[step] = source
    out = np.zeros((k, t))
    state = np.argmax(value, axis=1)
    for step in range(t - 1, -1, -1):
        out[:, step] = (state >= 1) & (state <= longest)
        state = came_from[step][rows, state]
    return out


def priced_runs(
    gain: FloatArray,
    price: FloatArray,
    depth_kw: FloatArray,
    rules: PlantRules,
    rebound: Rebound,
    end_cost: float,
) -> FloatArray:
    """On/off per load and interval worth the most money under the plant's rules.

    `gain[j, t]` is what a kW of reduction of load j in interval t is worth (the energy's price
    less the load's cost), `price[j, t]` what a kW drawn back costs, both per kW·interval;
    `end_cost` what a kW·interval still owed at the end costs. A load in a run reduces fully or
    by the least it may (`RUN_MIN_DEPTH`). Loads without rebound are `plant_runs` at those
    values; those with rebound also carry what they owe.
    """
    k, t = gain.shape
    full = np.where(depth_kw > 0, gain * depth_kw, _NEG)
    out = np.zeros((k, t))
    plain = np.flatnonzero(rebound.fraction <= 0)
    if plain.size:
        worth = np.where(full > 0, full, RUN_MIN_DEPTH * full)
        out[plain] = plant_runs(worth[plain], _take(rules, plain))
    duration = np.minimum(rules.duration, t)
    deepest = np.maximum(depth_kw.max(axis=1), 1e-9)
    fraction = rebound.fraction
    # Owed in steps: a full-depth interval owes a whole number of them, unless the most a
    # load may owe would take more than OWED_MAX_STEPS (long runs): then coarser steps.
    per_interval = np.maximum(1.0, np.ceil(fraction / OWED_STEP_SHARE - 1e-9))
    most = OWED_CAP_RUNS * fraction * deepest * duration
    step_kw = np.maximum(fraction * deepest / per_interval, most / OWED_MAX_STEPS)
    step_kw = np.where(fraction > 0, step_kw, 1.0)
    inc = np.rint(fraction[:, None] * depth_kw / step_kw[:, None]).astype(np.int64)
    draw = np.floor(rebound.draw_max_kw / step_kw + 1e-9).astype(np.int64)
    levels = 1 + np.clip(np.ceil(most / step_kw - 1e-9), 1, OWED_MAX_STEPS).astype(np.int64)
    # The rebound of the least reduction is too small to count in steps: it is costed at the
    # cheapest price it could be drawn at later (runs may carry it on), or owed at the end.
    repay = _cheapest_later(price, end_cost)
    least = np.where(
        depth_kw > 0, RUN_MIN_DEPTH * depth_kw * (gain - fraction[:, None] * repay), _NEG
    )
    draw_cost = price * step_kw[:, None]
    for j in np.flatnonzero(fraction > 0):
        out[j] = _compiled_load_runs()(
            full[j],
            least[j],
            draw_cost[j],
            inc[j],
            int(duration[j]),
            max(int(rules.rest[j]), 1),
            max(int(rules.forced_rest[j]), 1),
            int(rebound.window[j]),
            int(draw[j]),
            int(levels[j]),
            float(step_kw[j] * end_cost),
        )
    return out


def _cheapest_later(price: FloatArray, end_cost: float) -> FloatArray:
    """(k, T): the lowest of `price` after each interval, or `end_cost` (owed at the end)."""
    later = np.concatenate([price[:, 1:], np.full((price.shape[0], 1), end_cost)], axis=1)
    return np.minimum(np.minimum.accumulate(later[:, ::-1], axis=1)[:, ::-1], end_cost)


def warm_up() -> None:
    """Compile the programme for loads that rebound now, into numba's cache beside this
    module, rather than in the first plan of a fresh installation (about 4 s)."""
    price = np.array([[1.0, -1.0]])
    one = np.ones(1, dtype=np.int64)
    priced_runs(
        price,
        price,
        np.ones((1, 2)),
        PlantRules(one, one, one),
        Rebound(np.ones(1), one, np.ones(1)),
        0.0,
    )


def _take(rules: PlantRules, index: IntArray) -> PlantRules:
    return PlantRules(rules.duration[index], rules.rest[index], rules.forced_rest[index])


@functools.cache
def _compiled_load_runs() -> Callable[..., FloatArray]:
    """`_load_runs` compiled (numba, cached beside this module), on first use: importing
    numba costs most of a second, which a process that never prices runs does not pay."""
    import numba  # noqa: PLC0415 - numba is slow to import

    compiled: Callable[..., FloatArray] = numba.njit(cache=True, nogil=True)(_load_runs)
    return compiled


def _load_runs(
    full_gain: FloatArray,
    least_gain: FloatArray,
    draw_cost: FloatArray,
    inc: IntArray,
    longest: int,
    rest: int,
    forced_rest: int,
    window: int,
    draw: int,
    levels: int,
    owed_end: float,
) -> FloatArray:  # pragma: no cover (compiled; its Python source is not traced)
    """On/off per interval of one rebounding load, by dynamic programming over its states:
    running for d + 1 intervals with q steps owed, or off for a + 1 intervals (since the last
    reduction; the last age stands for all older ones) after a voluntary (0) or a forced (1)
    release with q steps owed. In a run an interval reduces fully (gain `full_gain`, owing
    `inc` more steps) or the least it may (`least_gain`); off, it may draw up to `draw` steps
    at `draw_cost` each; nothing is owed `window` intervals after the last reduction; a start
    waits `rest` intervals after a voluntary release, `forced_rest` after a forced one. Each
    step's choices are kept, and the best path is traced back from the best end (what is
    still owed costing `owed_end` a step)."""
    t = full_gain.shape[0]
    ages = max(window, rest, forced_rest, 2)
    neg = -np.inf
    run = np.full((longest, levels), neg)
    off = np.full((2, ages, levels), neg)
    off[0, ages - 1, 0] = 0.0
    went_full = np.zeros((t, longest, levels), dtype=np.bool_)
    started_from = np.zeros((t, levels), dtype=np.int64)  # 2-D index (kind, age) of a start
    released_at = np.zeros((t, levels), dtype=np.int64)  # run index of a voluntary release
    stayed_old = np.zeros((t, 2, levels), dtype=np.bool_)  # the oldest age from the oldest
    drawn = np.zeros((t, 2, ages, levels), dtype=np.int64)
    new_run = np.empty((longest, levels))
    new_off = np.empty((2, ages, levels))
    before = np.empty((2, ages))
    start = np.empty(levels)  # the best start per level owed
    for s in range(t):
        # Off in s: just released (age 1), or one interval older; then draw m steps.
        for q in range(levels):
            best, arg = neg, 0
            for d in range(longest - 1):
                if run[d, q] > best:
                    best, arg = run[d, q], d
            released_at[s, q] = arg
            before[0, 0] = best
            before[1, 0] = run[longest - 1, q]
            for kind in range(2):
                for a in range(1, ages):
                    before[kind, a] = off[kind, a - 1, q]
                stay = off[kind, ages - 1, q] > off[kind, ages - 2, q]
                stayed_old[s, kind, q] = stay
                if stay:
                    before[kind, ages - 1] = off[kind, ages - 1, q]
            for kind in range(2):
                for a in range(ages):
                    new_off[kind, a, q] = before[kind, a]
        for kind in range(2):
            for a in range(ages):
                # Draws: from q + m owed to q, in increasing q so `new_off` still holds the
                # undrawn values above q.
                for q in range(levels):
                    best, arg = new_off[kind, a, q], 0
                    for m in range(1, min(draw, levels - 1 - q) + 1):
                        value = new_off[kind, a, q + m] - m * draw_cost[s]
                        if value > best:
                            best, arg = value, m
                    new_off[kind, a, q] = best
                    drawn[s, kind, a, q] = arg
                if a + 1 >= window:  # the window has passed: nothing may be owed
                    for q in range(1, levels):
                        new_off[kind, a, q] = neg
        # In a run in s: start from a long enough rest, or go on; full depth or the least.
        for q in range(levels):
            best, arg = neg, 0
            for kind in range(2):
                need = rest if kind == 0 else forced_rest
                for a in range(need - 1, ages):
                    if off[kind, a, q] > best:
                        best, arg = off[kind, a, q], kind * ages + a
            start[q] = best
            started_from[s, q] = arg
        for q in range(levels):
            for d in range(longest):
                shallow = (start[q] if d == 0 else run[d - 1, q]) + least_gain[s]
                deep = neg
                if q >= inc[s]:
                    deep = (start[q - inc[s]] if d == 0 else run[d - 1, q - inc[s]]) + full_gain[s]
                went_full[s, d, q] = deep > shallow
                new_run[d, q] = deep if deep > shallow else shallow
        run, new_run = new_run, run
        off, new_off = new_off, off
    # The best end, then back through the kept choices.
    best, running, d, kind, age, level = neg, True, 0, 0, 0, 0
    for q in range(levels):
        for dd in range(longest):
            if run[dd, q] - q * owed_end > best:
                best, running, d, level = run[dd, q] - q * owed_end, True, dd, q
        for kk in range(2):
            for a in range(ages):
                if off[kk, a, q] - q * owed_end > best:
                    best, running, kind, age, level = off[kk, a, q] - q * owed_end, False, kk, a, q
    on = np.zeros(t)
    for s in range(t - 1, -1, -1):
        on[s] = 1.0 if running else 0.0
        if s == 0:
            break
        if running:
            if went_full[s, d, level]:
                level -= inc[s]
            if d == 0:
                origin = started_from[s, level]
                running, kind, age = False, origin // ages, origin % ages
            else:
                d -= 1
        else:
            level += drawn[s, kind, age, level]
            if age == 0:
                running = True
                d = released_at[s, level] if kind == 0 else longest - 1
            elif age == ages - 1 and stayed_old[s, kind, level]:
                pass
            else:
                age -= 1
    return on
