"""Facts derived from an asset's enrollment: its static power range and what it can offer."""

from __future__ import annotations

from dataclasses import dataclass

from vpp.config.schema import (
    AnyAsset,
    BatteryAsset,
    CurtailableLoad,
    EvCharging,
    Generator,
    Park,
    PvAsset,
    ShiftableLoad,
    ThermalLoad,
)
from vpp.domain import PowerLimits


def static_limits(asset: AnyAsset) -> PowerLimits:
    """The widest power range the asset can ever be asked for (positive = drawn from the grid)."""
    match asset:
        case BatteryAsset():
            return PowerLimits(-asset.power_kw, asset.max_charge_kw)
        case PvAsset():
            return PowerLimits(-asset.max_output_kw, 0.0)
        case CurtailableLoad():
            return PowerLimits(0.0, asset.profile.peak_kw)
        case ShiftableLoad():
            return PowerLimits(0.0, asset.power_kw)
        case ThermalLoad():
            return PowerLimits(0.0, asset.rated_power_kw)
        case EvCharging():
            return PowerLimits(-asset.max_power_kw if asset.v2g else 0.0, asset.max_power_kw)
        case Generator():
            return PowerLimits(-asset.max_kw, 0.0)
    raise TypeError(f"unknown asset type {type(asset).__name__}")


@dataclass(frozen=True, slots=True)
class Flexibility:
    """How far an asset can move power up (more drawn) and down (less drawn), and for how long."""

    up_kw: float
    down_kw: float
    energy_kwh: float


def enrolled_flexibility(asset: AnyAsset) -> Flexibility:
    """Nameplate flexibility from the enrollment alone, before forecasts and state."""
    match asset:
        case BatteryAsset():
            return Flexibility(asset.max_charge_kw, asset.power_kw, asset.usable_energy_kwh)
        case PvAsset():
            down = 0.0
            up = asset.max_output_kw if asset.curtailable else 0.0
            return Flexibility(up, down, 0.0)
        case CurtailableLoad():
            energy = asset.max_reduction_kw * asset.max_duration_min / 60
            return Flexibility(0.0, asset.max_reduction_kw, energy)
        case ShiftableLoad():
            energy = asset.energy_per_run_kwh * asset.runs_per_day
            return Flexibility(asset.power_kw, asset.power_kw, energy)
        case ThermalLoad():
            return Flexibility(
                asset.rated_power_kw, asset.holding_power_kw, asset.storable_energy_kwh
            )
        case EvCharging():
            down = asset.max_power_kw if asset.v2g else 0.0
            return Flexibility(asset.max_power_kw, down, 0.0)
        case Generator():
            return Flexibility(0.0, asset.max_kw, 0.0)
    raise TypeError(f"unknown asset type {type(asset).__name__}")


@dataclass(frozen=True, slots=True)
class ParkSummary:
    enterprises: int
    assets_by_kind: dict[str, int]
    up_kw: float
    down_kw: float
    energy_kwh: float
    storage_kwh: float
    pv_kwp: float


def summarise(park: Park) -> ParkSummary:
    """Counts and nameplate flexibility of a park, as `vpp validate` prints them."""
    by_kind: dict[str, int] = {}
    up = down = energy = storage = pv = 0.0
    for _, asset in park.iter_assets():
        by_kind[asset.kind.value] = by_kind.get(asset.kind.value, 0) + 1
        flex = enrolled_flexibility(asset)
        up += flex.up_kw
        down += flex.down_kw
        energy += flex.energy_kwh
        if isinstance(asset, BatteryAsset):
            storage += asset.usable_energy_kwh
        if isinstance(asset, PvAsset):
            pv += asset.capacity_kwp
    return ParkSummary(len(park.enterprises), by_kind, up, down, energy, storage, pv)
