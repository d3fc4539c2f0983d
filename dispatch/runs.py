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
program that receives the runs then sets the depths and draws exactly.
"""

from __future__ import annotations

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
    full = gain * depth_kw
    worth = np.where(full > 0, full, RUN_MIN_DEPTH * full)
    worth = np.where(depth_kw > 0, worth, _NEG)
    out = np.zeros((k, t))
    owes = rebound.fraction > 0
    plain = np.flatnonzero(~owes)
    if plain.size:
        out[plain] = plant_runs(worth[plain], _take(rules, plain))
    # Loads of one duration at a time: each has as many states as its longest run.
    for duration in np.unique(rules.duration[owes]):
        owing = np.flatnonzero(owes & (rules.duration == duration))
        out[owing] = _owing_runs(
            gain[owing],
            price[owing],
            depth_kw[owing],
            _take(rules, owing),
            Rebound(rebound.fraction[owing], rebound.window[owing], rebound.draw_max_kw[owing]),
            end_cost,
        )
    return out


def _cheapest_later(price: FloatArray, end_cost: float) -> FloatArray:
    """(k, T): the lowest of `price` after each interval, or `end_cost` (owed at the end)."""
    later = np.concatenate([price[:, 1:], np.full((price.shape[0], 1), end_cost)], axis=1)
    return np.minimum(np.minimum.accumulate(later[:, ::-1], axis=1)[:, ::-1], end_cost)


def _take(rules: PlantRules, index: IntArray) -> PlantRules:
    return PlantRules(rules.duration[index], rules.rest[index], rules.forced_rest[index])


def _owing_runs(
    gain: FloatArray,
    price: FloatArray,
    depth_kw: FloatArray,
    rules: PlantRules,
    rebound: Rebound,
    end_cost: float,
) -> FloatArray:
    """`priced_runs` of loads that rebound. States per load: running for d intervals with q
    steps owed, or off for a intervals (since the last reduction; the last age stands for all
    older ones) after a voluntary or a forced release with q owed. Each step's choices are
    kept so that the best path is traced back for all loads at once."""
    k, t = gain.shape
    rows = np.arange(k)
    duration = np.minimum(rules.duration, t)
    deepest = np.maximum(depth_kw.max(axis=1), 1e-9)
    fraction = rebound.fraction
    # Owed in steps: a full-depth interval owes a whole number of them.
    per_interval = np.maximum(1.0, np.ceil(fraction / OWED_STEP_SHARE - 1e-9))
    step_kw = fraction * deepest / per_interval
    inc = np.rint(fraction[:, None] * depth_kw / step_kw[:, None]).astype(np.int64)
    draw = np.floor(rebound.draw_max_kw / step_kw + 1e-9).astype(np.int64)
    cap = int(max(1, np.ceil(OWED_CAP_RUNS * (inc.max(axis=1) * duration).max())))
    levels = cap + 1
    longest = int(duration.max())
    ages = int(max(rebound.window.max(), rules.rest.max(), rules.forced_rest.max(), 2))
    q = np.arange(levels)
    a_index = np.arange(ages)
    need = np.stack([np.maximum(rules.rest, 1), np.maximum(rules.forced_rest, 1)], axis=1)
    may_start = (a_index[None, None, :] + 1 >= need[:, :, None])[..., None]  # (k, 2, A, 1)
    # Nothing owed once the window has passed since the last reduction.
    closed = (a_index[None, :] + 1 >= rebound.window[:, None])[:, None, :, None] & (q > 0)
    closed = np.broadcast_to(closed, (k, 2, ages, levels))
    full_gain = gain * depth_kw
    # The rebound of the least reduction is too small to count in steps: it is costed at the
    # cheapest price it could be drawn at later (runs may carry it on), or owed at the end.
    repay = _cheapest_later(price, end_cost)
    least_gain = RUN_MIN_DEPTH * depth_kw * (gain - fraction[:, None] * repay)
    draw_cost = price * step_kw[:, None]

    run = np.full((k, longest, levels), _NEG)
    off = np.full((k, 2, ages, levels), _NEG)
    off[:, 0, ages - 1, 0] = 0.0
    went_full = np.zeros((t, k, longest, levels), dtype=bool)
    started_from = np.zeros((t, k, levels), dtype=np.int16)  # (type, age) of a start
    released_at = np.zeros((t, k, levels), dtype=np.int16)  # run length - 1 of a release
    stayed_old = np.zeros((t, k, 2, levels), dtype=bool)  # oldest age from oldest age
    drawn_steps = np.zeros((t, k, 2, ages, levels), dtype=np.int8)
    most_drawn = min(int(draw.max(initial=0)), levels - 1)
    drawable = [(m <= draw)[:, None, None, None] for m in range(most_drawn + 1)]
    for s in range(t):
        # Off in s: just released (age 1), or one interval older.
        before = np.empty((k, 2, ages, levels))
        before[:, 0, 0] = _NEG
        if longest > 1:
            released_at[s] = run[:, :-1].argmax(axis=1)
            before[:, 0, 0] = run[:, :-1].max(axis=1)
        before[:, 1, 0] = run[:, -1]
        before[:, :, 1:] = off[:, :, :-1]
        stayed_old[s] = off[:, :, -1] > off[:, :, -2]
        np.maximum(off[:, :, -2], off[:, :, -1], out=before[:, :, -1])
        # Draw m steps of what is owed, at this interval's price.
        after = before.copy()
        for m in range(1, most_drawn + 1):
            candidate = before[..., m:] - (m * draw_cost[:, s])[:, None, None, None]
            kept = after[..., : levels - m]
            better = (candidate > kept) & drawable[m]
            np.copyto(kept, candidate, where=better)
            drawn_steps[s, ..., : levels - m][better] = m
        after[closed] = _NEG
        # In a run in s: start from a long enough rest, or go on.
        starts = np.where(may_start, off, _NEG).reshape(k, 2 * ages, levels)
        started_from[s] = starts.argmax(axis=1)
        source = np.empty((k, longest, levels))
        source[:, 0] = starts.max(axis=1)
        source[:, 1:] = run[:, :-1]
        deep = np.full((k, longest, levels), _NEG)
        for c in np.unique(inc[:, s]):  # steps owed by a full-depth interval
            these = inc[:, s] == c
            if c < levels:
                deep[these, :, c:] = source[these, :, : levels - c]
        deep += full_gain[:, s, None, None]
        shallow = source + least_gain[:, s, None, None]
        went_full[s] = deep > shallow
        run = np.maximum(deep, shallow)
        run[depth_kw[:, s] <= 0] = _NEG
        off = after
    # The best end, what is still owed costed; then back through the kept choices.
    owed_end = (q[None, :] * step_kw[:, None]) * end_cost
    run_end = run - owed_end[:, None, :]
    off_end = off - owed_end[:, None, None, :]
    best_run: IntArray = run_end.reshape(k, -1).argmax(axis=1)
    best_off: IntArray = off_end.reshape(k, -1).argmax(axis=1)
    running = run_end.reshape(k, -1)[rows, best_run] >= off_end.reshape(k, -1)[rows, best_off]
    d = best_run // levels  # run length - 1 (0 when off)
    kind = best_off // levels // ages  # 0 voluntary, 1 forced release (when off)
    age = best_off // levels % ages  # age - 1 (when off)
    level = np.where(running, best_run % levels, best_off % levels)
    d = np.where(running, d, 0)
    out = np.zeros((k, t))
    for s in range(t - 1, 0, -1):
        out[:, s] = running
        # In a run: a level less after a full-depth interval; from a rest when d = 0.
        was_full = went_full[s, rows, d, level]
        prior = np.where(running & was_full, level - inc[rows, s], level)
        start_at = started_from[s, rows, prior].astype(np.int64)
        from_off = running & (d == 0)
        # Off: more owed before the draw; from a run at age 1.
        drawn = drawn_steps[s, rows, kind, age, level].astype(np.int64)
        owed = np.where(running, prior, level + drawn)
        from_run = ~running & (age == 0)
        release = np.where(kind == 0, released_at[s, rows, owed], duration - 1)
        oldest = ~running & (age == ages - 1) & stayed_old[s, rows, kind, owed]
        older = np.where(oldest, age, np.maximum(age - 1, 0))
        level = owed
        d = np.where(running, np.where(from_off, 0, d - 1), np.where(from_run, release, 0))
        kind = np.where(from_off, start_at // ages, kind)
        age = np.where(from_off, start_at % ages, np.where(running, 0, older))
        running = np.where(running, ~from_off, from_run)
    out[:, 0] = running
    return out
