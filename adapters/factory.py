"""Build the adapters a park's enrollment asks for, grouped so each peer gets one connection."""

from __future__ import annotations

from collections import defaultdict

from adapters.base import Adapter
from adapters.modbus import ModbusAdapter, ModbusDevice
from adapters.ocpp import OcppCentralSystem, OcppStation
from adapters.sim import SimAdapter
from vpp.clock import Clock
from vpp.config.schema import (
    AnyAsset,
    Enterprise,
    GatewayRef,
    HttpConnection,
    ModbusConnection,
    MqttConnection,
    OcppConnection,
    Park,
    SimConnection,
)
from vpp.errors import ConfigError, Problem
from vpp.metrics import Metrics

AnyConnection = SimConnection | MqttConnection | HttpConnection | ModbusConnection | OcppConnection


def resolve_connection(enterprise: Enterprise, asset: AnyAsset) -> AnyConnection:
    """The asset's own connection, or the settings of the enterprise gateway it names."""
    connection = asset.connection
    if isinstance(connection, GatewayRef):
        for gateway in enterprise.gateways:
            if gateway.id == connection.gateway:
                return gateway.connection
        raise ConfigError(
            [
                Problem(
                    enterprise.id,
                    None,
                    f"{asset.id}.connection.gateway",
                    f"unknown gateway '{connection.gateway}'",
                )
            ]
        )
    return connection


def build_adapters(
    park: Park, clock: Clock, *, seed: int = 0, metrics: Metrics | None = None
) -> list[Adapter]:
    """One adapter per protocol peer: the simulator, the OCPP server, Modbus devices, brokers."""
    by_kind: dict[type, list[tuple[Enterprise, AnyAsset, AnyConnection]]] = defaultdict(list)
    for enterprise, asset in park.iter_assets():
        connection = resolve_connection(enterprise, asset)
        by_kind[type(connection)].append((enterprise, asset, connection))

    adapters: list[Adapter] = []
    if by_kind[SimConnection]:
        adapters.append(SimAdapter.from_park(park, clock, seed=seed))
    modbus = [
        ModbusDevice(a.id, c)
        for _, a, c in by_kind[ModbusConnection]
        if isinstance(c, ModbusConnection)
    ]
    if modbus:
        adapters.append(ModbusAdapter("modbus", modbus, clock))
    ocpp = [
        OcppStation(a.id, c) for _, a, c in by_kind[OcppConnection] if isinstance(c, OcppConnection)
    ]
    if ocpp:
        host, port = park.engine.ocpp_listen.rsplit(":", 1)
        adapters.append(
            OcppCentralSystem(
                "ocpp",
                ocpp,
                clock,
                host=host.strip("[]"),
                port=int(port),
                heartbeat_interval_s=park.engine.ocpp_heartbeat_s,
            )
        )
    missing = [
        (a.id, type(c).__name__)
        for kind in (MqttConnection, HttpConnection)
        for _, a, c in by_kind[kind]
    ]
    if missing:
        raise ConfigError(
            [
                Problem(park.id, None, f"{asset_id}.connection", f"no adapter for {kind}")
                for asset_id, kind in missing
            ]
        )
    return adapters
