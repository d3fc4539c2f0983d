"""Build the adapters a park's enrollment asks for, grouped so each peer gets one connection."""

from __future__ import annotations

from collections import defaultdict

from adapters.base import Adapter
from adapters.http import http_adapters
from adapters.modbus import ModbusAdapter, ModbusDevice
from adapters.mqtt import mqtt_adapters
from adapters.ocpp import OcppCentralSystem, OcppStation
from adapters.sim import SimAdapter
from vpp.clock import Clock
from vpp.config.schema import (
    AnyAsset,
    DeviceConnection,
    Enterprise,
    HttpConnection,
    ModbusConnection,
    MqttConnection,
    OcppConnection,
    Park,
    SimConnection,
)
from vpp.metrics import Metrics


def build_adapters(
    park: Park, clock: Clock, *, seed: int = 0, metrics: Metrics | None = None
) -> list[Adapter]:
    """One adapter per protocol peer: the simulator, the OCPP server, Modbus devices, brokers."""
    by_kind: dict[type, list[tuple[Enterprise, AnyAsset, DeviceConnection]]] = defaultdict(list)
    for enterprise, asset in park.iter_assets():
        connection = enterprise.route(asset).connection
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
    if by_kind[MqttConnection]:
        adapters.extend(mqtt_adapters(park, clock, metrics))
    if by_kind[HttpConnection]:
        adapters.extend(http_adapters(park, clock, metrics))
    return adapters
