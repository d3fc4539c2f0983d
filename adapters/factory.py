"""Build the adapters a park's enrollment asks for, grouped so each peer gets one connection."""

from __future__ import annotations

from adapters.base import Adapter
from adapters.sim import SimAdapter
from vpp.clock import Clock
from vpp.config.schema import Park, SimConnection
from vpp.errors import ConfigError, Problem


def build_adapters(park: Park, clock: Clock, *, seed: int = 0) -> list[Adapter]:
    """One adapter per protocol peer: the simulator, each MQTT broker, HTTP endpoint, ..."""
    adapters: list[Adapter] = []
    if any(isinstance(asset.connection, SimConnection) for _, asset in park.iter_assets()):
        adapters.append(SimAdapter.from_park(park, clock, seed=seed))
    unsupported = sorted(
        {type(asset.connection).__name__ for _, asset in park.iter_assets()}
        - {SimConnection.__name__}
    )
    if unsupported:
        raise ConfigError(
            [
                Problem(
                    park.id, None, "connection", f"adapters not available: {', '.join(unsupported)}"
                )
            ]
        )
    return adapters
