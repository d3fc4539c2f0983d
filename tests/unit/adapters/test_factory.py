"""The engine builds one adapter per peer from the enrollment, gateways included."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

from adapters.factory import build_adapters
from adapters.http import HttpAdapter
from adapters.mqtt import MqttAdapter
from adapters.sim import SimAdapter
from vpp.clock import ManualClock
from vpp.config import load_park
from vpp.config.schema import GatewayRef, Park

ROOT = Path(__file__).resolve().parents[3]

HEADER = textwrap.dedent(
    """\
    name: Gateway park
    location: {latitude_deg: 31.2, longitude_deg: 121.5}
    grid_import_limit_kw: 5000
    market: {rule_set: cn_provincial_spot}
    enterprises:
      - id: e1
        name: E1
        connection_limit_kw: 3000
    """
)


def load(tmp_path: Path, park_id: str, enterprise: str) -> Park:
    """A one-enterprise park: HEADER, then `enterprise`'s YAML (its gateways and assets)."""
    path = tmp_path / "park.yaml"
    body = textwrap.indent(textwrap.dedent(enterprise), "    ")
    path.write_text(f"id: {park_id}\n{HEADER}{body}")
    return load_park(path, ROOT / "config/markets").park


ROUTED = """\
    gateways:
      - {id: gw1, connection: {adapter: mqtt, port: 1883}}
      - {id: ems, connection: {adapter: http, base_url: "http://127.0.0.1:9/ems"}}
    assets:
      - {id: b1, kind: battery, power_kw: 500, capacity_kwh: 1000, connection: {gateway: gw1, device_id: inv-7}}
      - {id: b2, kind: battery, power_kw: 500, capacity_kwh: 1000, connection: {gateway: ems}}
      - {id: pv1, kind: pv, capacity_kwp: 400}
    """


def test_assets_behind_gateways_get_their_protocol_adapter(tmp_path: Path) -> None:
    park = load(tmp_path, "p1", ROUTED)
    adapters = build_adapters(park, ManualClock(datetime(2026, 7, 1, tzinfo=UTC)))
    by_type = {type(a): a for a in adapters}
    assert set(by_type) == {SimAdapter, MqttAdapter, HttpAdapter}
    assert by_type[MqttAdapter].asset_ids == frozenset({"b1"})
    assert by_type[HttpAdapter].asset_ids == frozenset({"b2"})
    assert by_type[SimAdapter].asset_ids == frozenset({"pv1"})
    route = park.enterprises[0].route(park.asset("b1"))
    assert (route.endpoint_id, route.device_id) == ("gw1", "inv-7")


SIM_GATEWAY = """\
    gateways:
      - {id: simgw, connection: {adapter: sim, telemetry_period_s: 5, response_lag_s: 0}}
    assets:
      - {id: b1, kind: battery, power_kw: 500, capacity_kwh: 1000, connection: {gateway: simgw}}
      - {id: pv1, kind: pv, capacity_kwp: 400}
    """


def test_simulated_assets_behind_a_gateway_are_simulated(tmp_path: Path) -> None:
    park = load(tmp_path, "p2", SIM_GATEWAY)
    clock = ManualClock(datetime(2026, 7, 1, 4, tzinfo=UTC))
    adapters = build_adapters(park, clock)
    assert [type(a) for a in adapters] == [SimAdapter]
    sim = adapters[0]
    assert isinstance(sim, SimAdapter)
    assert sim.asset_ids == frozenset({"b1", "pv1"})
    assert sim.enterprise_of["b1"] == "e1"
    # b1 runs on its gateway's connection settings; pv1 on its own (the defaults)
    assert (sim.models["b1"].telemetry_period_s, sim.models["b1"].response_lag_s) == (5.0, 0.0)
    assert sim.models["pv1"].telemetry_period_s == 2.0
    assert isinstance(park.asset("b1").connection, GatewayRef)  # the enrollment is unchanged
    readings = sim.step_once(clock.now(), 5.0)
    assert {m.asset_id for m in readings} == {"b1", "pv1"}
