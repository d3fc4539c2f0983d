"""Real-time allocation: split a required park power change over assets within their limits.

Pure and vectorised (numpy, no Python loop over assets), so one call for 10,000 assets takes
well under a millisecond. Assets are filled in cost order; assets of one cost tier share their
tier's part in proportion to their headroom, so no single asset is driven to its bound while
its peers of equal cost idle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Relative slack when deciding that a request lies within the available headroom.
_REL_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class Allocation:
    """Result of one allocation.

    `power_kw[i]` is the new power of asset i, always within [lower_kw[i], upper_kw[i]];
    `requested_kw` is the park change asked for and `allocated_kw` the change delivered
    (sum of `power_kw` minus sum of the current powers). `saturated` is true when the request
    lay beyond the headroom and every asset was driven to its bound in that direction.
    """

    power_kw: FloatArray
    requested_kw: float
    allocated_kw: float
    saturated: bool

    @property
    def shortfall_kw(self) -> float:
        """Requested minus allocated change (0 unless saturated)."""
        return self.requested_kw - self.allocated_kw


def allocate(
    current_kw: npt.ArrayLike,
    lower_kw: npt.ArrayLike,
    upper_kw: npt.ArrayLike,
    cost: npt.ArrayLike,
    change_kw: float,
    *,
    tier_width: float = 0.0,
) -> Allocation:
    """Distribute a park power change `change_kw` (either sign) over assets.

    Each asset starts from its current power clipped into [lower, upper] (limits may have
    moved since it was last commanded); the rest of the change is filled from the cheapest
    cost tier upward, proportionally to headroom within a tier. Costs are per asset (lower =
    dispatched first); with `tier_width > 0` costs within the same multiple of `tier_width`
    form one tier. If the change lies within the total headroom (sum(lower) - sum(current) <=
    change <= sum(upper) - sum(current)) the result sums to it; otherwise every asset ends at
    its bound in the direction of the change.
    """
    current = np.asarray(current_kw, dtype=np.float64)
    lower = np.asarray(lower_kw, dtype=np.float64)
    upper = np.asarray(upper_kw, dtype=np.float64)
    costs = np.asarray(cost, dtype=np.float64)
    n = current.shape[0]
    if not (lower.shape == upper.shape == costs.shape == (n,)) or current.ndim != 1:
        raise ValueError(
            "allocate: current_kw, lower_kw, upper_kw and cost must be 1-D arrays of one length"
        )
    if not np.isfinite(change_kw):
        raise ValueError(f"allocate: change_kw must be finite, got {change_kw}")
    if np.any(lower > upper):
        raise ValueError("allocate: some lower_kw exceed upper_kw")
    if n == 0:
        return Allocation(np.zeros(0), change_kw, 0.0, change_kw != 0.0)

    base = np.clip(current, lower, upper)
    # Clipping into the limits already moved the park; only the rest is left to place.
    remaining = change_kw - float(np.sum(base - current))
    headroom = upper - base if remaining > 0 else base - lower
    wanted = abs(remaining)
    available = float(np.sum(headroom))
    scale = max(wanted, available, 1.0)
    saturated = wanted > available + _REL_TOL * scale

    if wanted <= _REL_TOL * scale or available <= 0.0:
        move = np.zeros(n)
    elif saturated or wanted >= available:
        move = headroom
    else:
        move = _fill_by_tier(headroom, costs, wanted, tier_width)

    power = base + move if remaining > 0 else base - move
    # Guard against rounding pushing a value a hair outside its bound.
    power = np.clip(power, lower, upper)
    allocated = float(np.sum(power) - np.sum(current))
    return Allocation(power, change_kw, allocated, saturated)


MIN_TIER_HEADROOM_KW = 1e-12


def _fill_by_tier(
    headroom: FloatArray, costs: FloatArray, wanted: float, tier_width: float
) -> FloatArray:
    """Movement per asset (>= 0, <= headroom) summing to `wanted` < sum(headroom)."""
    keys = np.floor(costs / tier_width) if tier_width > 0 else costs
    tiers, tier_of = np.unique(keys, return_inverse=True)  # sorted ascending: cheapest first
    tier_headroom = np.bincount(tier_of, weights=headroom, minlength=tiers.shape[0])
    filled_before = np.concatenate(([0.0], np.cumsum(tier_headroom)[:-1]))
    # Fraction of each tier's headroom used: 1 for tiers fully used, 0 beyond the last one.
    # A tier with a vanishing (even subnormal) headroom takes no share: dividing by it would
    # overflow, and what it could take is below any meaningful power.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        fraction = np.where(
            tier_headroom > MIN_TIER_HEADROOM_KW, (wanted - filled_before) / tier_headroom, 0.0
        ).clip(0.0, 1.0)
    move: FloatArray = headroom * fraction[tier_of]
    return move
