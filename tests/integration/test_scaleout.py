"""Scale-out: three shard engines and a coordinator follow a stepped park target over MQTT.

A park of 6 enterprises x 40 devices (batteries and process loads behind one gateway per
enterprise) is split by a static map over 3 shards, each an `Engine` with the MQTT adapter
for its 2 enterprises. Device emulators step the simulator's physics and answer setpoints;
the coordinator steps the park target up and down and splits it by the headroom the shards
report. Everything talks through a private Mosquitto (MQTT 5), or the embedded amqtt broker
(MQTT 3.1.1) where Mosquitto is not installed. The split itself is checked against shares
computed by hand, and its invariants with hypothesis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.mqtt_device import DeviceModel, MqttDeviceEmulator
from adapters.sim import SimOptions, Site, make_model
from tests.brokers import AmqttBroker, MosquittoProcess, mosquitto_available
from vpp.clock import SystemClock
from vpp.config.schema import Park, SimConnection
from vpp.control import ControlOptions
from vpp.coordinator import (
    Coordinator,
    CoordinatorOptions,
    Step,
    StepProgram,
    evaluate_steps,
    split_target,
)
from vpp.errors import ConfigError, PayloadError
from vpp.shard import (
    LinkSettings,
    Shard,
    ShardMap,
    ShardOptions,
    ShardReport,
    Share,
    load_shard_config,
)

pytestmark = pytest.mark.integration

Protocol = Literal["3.1.1", "5"]

NOW = datetime(2024, 6, 5, 2, 0, tzinfo=UTC)
PREFIX = "scale"
ENTERPRISES = 6
SHARDS = 3
BATTERIES = 28  # per enterprise, 10 kW each
LOADS = 12  # per enterprise, 10 kW each, 3 kW curtailable
PERIOD_S = 0.5  # telemetry, control and report period
STEP_KW = 400.0  # about a quarter of the park's battery rating (1,680 kW)
# The stated band: devices answer with a 0.5 s lag and report every 0.5 s; shares and the
# shards' readings reach the coordinator a period late. At the end of each 5 s step the
# park must be within 8 % of the step of its target (32 kW up, 64 kW down).
END_BAND_FRACTION = 0.08


def report(shard: str, measured: float, low: float, high: float) -> ShardReport:
    return ShardReport(shard, 1, NOW, measured, low, high, assets=10, fresh=10, controllable=10)


# --- the split, by hand ------------------------------------------------------------------------


def test_split_up_goes_by_up_headroom() -> None:
    reports = {
        "a": report("a", 100, 0, 200),  # up room 100
        "b": report("b", 200, 0, 400),  # up room 200
        "c": report("c", 300, 0, 300),  # none
    }
    split = split_target(750, reports)
    assert split.shares_kw == pytest.approx({"a": 150, "b": 300, "c": 300})
    assert not split.saturated
    assert split.resplit


def test_split_down_goes_by_down_headroom() -> None:
    reports = {
        "a": report("a", 100, 0, 200),  # down room 100
        "b": report("b", 200, 100, 400),  # 100
        "c": report("c", 300, 200, 300),  # 100
    }
    split = split_target(450, reports)
    assert split.shares_kw == pytest.approx({"a": 50, "b": 150, "c": 250})


def test_split_beyond_reach_sends_every_shard_to_its_bound() -> None:
    reports = {"a": report("a", 100, 0, 200), "b": report("b", 200, 0, 400)}
    split = split_target(2000, reports)
    assert split.saturated
    assert split.shares_kw == pytest.approx({"a": 200, "b": 400})
    low = split_target(-50, reports)
    assert low.saturated
    assert low.shares_kw == pytest.approx({"a": 0, "b": 0})


def test_split_keeps_shares_and_moves_what_a_shard_cannot_reach() -> None:
    previous = {"a": 150.0, "b": 300.0, "c": 300.0}
    # Same target; b can now reach only 250 (its batteries filled up): 50 kW go to a, the
    # only one with room up (c is at its top).
    reports = {
        "a": report("a", 140, 0, 200),
        "b": report("b", 240, 0, 250),
        "c": report("c", 300, 0, 300),
    }
    split = split_target(750, reports, previous)
    assert not split.resplit
    assert split.shares_kw == pytest.approx({"a": 200, "b": 250, "c": 300})
    # Nothing changed: the shares stay exactly as they were, whatever was measured.
    steady = split_target(750, {**reports, "b": report("b", 290, 0, 400)}, previous)
    assert steady.shares_kw == pytest.approx(previous)


def test_split_starts_afresh_when_a_shard_goes() -> None:
    previous = {"a": 150.0, "b": 300.0}
    split = split_target(450, {"a": report("a", 100, 0, 500)}, previous)
    assert split.resplit
    assert split.shares_kw == pytest.approx({"a": 450})


shard_state = st.tuples(st.floats(-1000, 1000), st.floats(0, 500), st.floats(0, 500)).map(
    lambda t: (t[0], t[0] - t[1], t[0] + t[2])
)


@settings(max_examples=100, deadline=None)
@given(
    states=st.lists(shard_state, min_size=1, max_size=5),
    target=st.floats(-5000, 5000),
    keep=st.booleans(),
)
def test_split_stays_in_reach_and_adds_up(
    states: list[tuple[float, float, float]], target: float, keep: bool
) -> None:
    reports = {f"s{k}": report(f"s{k}", m, lo, hi) for k, (m, lo, hi) in enumerate(states)}
    previous = {s: r.measured_kw + 10.0 for s, r in reports.items()} if keep else None
    split = split_target(target, reports, previous)
    for shard, share in split.shares_kw.items():
        r = reports[shard]
        assert r.low_kw - 1e-6 <= share <= r.high_kw + 1e-6
    low = sum(r.low_kw for r in reports.values())
    high = sum(r.high_kw for r in reports.values())
    if low + 1e-6 < target < high - 1e-6:
        assert not split.saturated
        assert split.total_kw == pytest.approx(target, abs=1e-6)
    else:
        assert split.total_kw == pytest.approx(min(max(target, low), high), abs=1e-6)


# --- messages, maps and configs ----------------------------------------------------------------


def test_report_and_share_round_trip_and_refuse_bad_payloads() -> None:
    sent = ShardReport(
        "s1", 7, NOW, 12.5, -100.0, 80.0, 40, 39, 30, 10.0, 3, 1.25, 400, 80.0, ("e0", "e1")
    )
    back = ShardReport.decode(sent.encode())
    assert back == sent
    assert back.up_kw == pytest.approx(67.5)
    assert back.down_kw == pytest.approx(112.5)
    share = Share("s1", 3, NOW, -50.0, NOW + timedelta(seconds=6), -150.0, NOW, "step 1")
    assert Share.decode(share.encode()) == share
    with pytest.raises(PayloadError, match="measured_kw"):
        ShardReport.decode(b'{"shard":"s1","seq":1,"at":1.0,"measured_kw":"x"}')
    with pytest.raises(PayloadError):
        Share.decode(b"[]")


def test_shard_map_balances_loads_and_refuses_a_doubly_owned_enterprise(tmp_path: Path) -> None:
    park = generated_park(port=1883)
    shard_map = ShardMap.balanced(park, SHARDS)
    assert sorted(e for es in shard_map.shards.values() for e in es) == sorted(
        e.id for e in park.enterprises
    )
    assert {len(es) for es in shard_map.shards.values()} == {2}
    path = tmp_path / "shards.yaml"
    shard_map.dump(path)
    assert ShardMap.load(path) == shard_map
    path.write_text("shards:\n  s1: [e0, e1]\n  s2: [e1]\n")
    with pytest.raises(ConfigError, match=r"e1.*already owned by 's1'"):
        ShardMap.load(path)


def test_a_shard_loads_only_its_enterprises(tmp_path: Path) -> None:
    path = tmp_path / "park.json"
    path.write_text(json.dumps(park_spec(port=1883)))
    loaded = load_shard_config(path, "config/markets", ["e1", "e4"])
    assert [e.id for e in loaded.park.enterprises] == ["e1", "e4"]
    assert len(loaded.park.iter_assets()) == 2 * (BATTERIES + LOADS)
    assert loaded.spot.id == "cn_provincial_spot"
    with pytest.raises(ConfigError, match="no enterprise 'e9'"):
        load_shard_config(path, "config/markets", ["e9"])


# --- three shards and a coordinator over a real broker -----------------------------------------


def park_spec(port: int, protocol: Protocol = "5") -> dict[str, Any]:
    enterprises = []
    for e in range(ENTERPRISES):
        via = {"gateway": f"gw{e}"}
        assets: list[dict[str, Any]] = [
            {"id": f"e{e}-b{k}", "kind": "battery", "power_kw": 10, "capacity_kwh": 20}
            | {"connection": via}
            for k in range(BATTERIES)
        ]
        assets += [
            {
                "id": f"e{e}-l{k}",
                "kind": "curtailable_load",
                "profile": {"weekday_kw": [10.0] * 24, "weekend_kw": [10.0] * 24},
                "max_reduction_kw": 3,
                "connection": via,
            }
            for k in range(LOADS)
        ]
        enterprises.append(
            {
                "id": f"e{e}",
                "name": f"Enterprise {e}",
                "connection_limit_kw": 5000,
                "gateways": [
                    {
                        "id": f"gw{e}",
                        "connection": {
                            "adapter": "mqtt",
                            "port": port,
                            "protocol": protocol,
                            "topic_prefix": PREFIX,
                        },
                    }
                ],
                "assets": assets,
            }
        )
    return {
        "id": "scale",
        "name": "Scale-out test park",
        "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
        "grid_import_limit_kw": 50_000,
        "market": {"rule_set": "cn_provincial_spot"},
        "engine": {
            "control_period_s": PERIOD_S,
            "setpoint_validity_s": 10,
            "telemetry_stale_s": 5,
        },
        "enterprises": enterprises,
    }


def generated_park(port: int, protocol: Protocol = "5") -> Park:
    return Park.model_validate(park_spec(port, protocol))


def emulators(park: Park, port: int, protocol: Protocol) -> list[MqttDeviceEmulator]:
    site = Site.of(park)
    fast = SimConnection(telemetry_period_s=PERIOD_S, response_lag_s=PERIOD_S)
    out = []
    for e, enterprise in enumerate(park.enterprises):
        models: dict[str, DeviceModel] = {
            a.id: make_model(a, site, SimOptions(seed=e, connection=fast))
            for a in enterprise.assets
        }
        out.append(
            MqttDeviceEmulator(
                host="127.0.0.1",
                port=port,
                prefix=PREFIX,
                enterprise_id=enterprise.id,
                endpoint_id=f"gw{e}",
                devices=models,
                batched=True,
                period_s=PERIOD_S,
                protocol=protocol,
            )
        )
    return out


@pytest.fixture
async def any_broker(tmp_path: Path) -> AsyncIterator[tuple[int, Protocol]]:
    """A private Mosquitto (MQTT 5) or, without it, the embedded amqtt broker (3.1.1)."""
    if mosquitto_available():
        with MosquittoProcess(tmp_path / "mosquitto") as mosquitto:
            yield mosquitto.port, "5"
    else:
        async with AmqttBroker() as amqtt:
            yield amqtt.port, "3.1.1"


@pytest.mark.timeout(60)
async def test_three_shards_follow_their_shares_and_the_park_tracks_the_target(
    any_broker: tuple[int, Protocol], tmp_path: Path
) -> None:
    port, protocol = any_broker
    path = tmp_path / "park.json"
    path.write_text(json.dumps(park_spec(port, protocol)))
    full = load_shard_config(path, "config/markets")
    shard_map = ShardMap.balanced(full.park, SHARDS)
    clock = SystemClock()
    link = LinkSettings(port=port, prefix=PREFIX, protocol=protocol)
    options = ShardOptions(
        report_period_s=PERIOD_S,
        control_options=ControlOptions(settle_cycles=2),
    )
    shards = [
        Shard(
            shard_id,
            load_shard_config(path, "config/markets", enterprises),
            clock=clock,
            link=link,
            options=options,
        )
        for shard_id, enterprises in shard_map.shards.items()
    ]
    for shard in shards:
        assert len(shard.engine.fleet) == 2 * (BATTERIES + LOADS)  # only its own enterprises
    coordinator = Coordinator(
        link,
        clock=clock,
        options=CoordinatorOptions(
            period_s=PERIOD_S,
            share_validity_s=4 * PERIOD_S,
            stale_after_s=4 * PERIOD_S,
            shards=tuple(shard_map.shards),
        ),
    )
    program = StepProgram(
        (Step(0.0, 0.0, "hold"), Step(3.0, STEP_KW, "up"), Step(8.0, -STEP_KW, "down")),
        hold_s=5.0,
        wait_s=15.0,
    )
    devices = emulators(full.park, port, protocol)
    async with asyncio.TaskGroup() as group:
        device_tasks = [group.create_task(d.run(), name=f"device:{d.endpoint_id}") for d in devices]
        shard_tasks = [group.create_task(s.run(), name=f"shard:{s.shard_id}") for s in shards]
        summary = await coordinator.run(duration_s=40.0, program=program)
        ends = [s.make_report() for s in shards]
        for shard in shards:
            shard.stop()
        shard_summaries = [await t for t in shard_tasks]
        for task in device_tasks:
            task.cancel()

    assert summary.shards == tuple(sorted(shard_map.shards))
    assert coordinator.started_at is not None and summary.base_kw is not None
    for shard, shard_summary, end in zip(shards, shard_summaries, ends, strict=True):
        # each shard reported every period and received its share every period
        assert summary.reports_received[shard.shard_id] >= 15
        assert shard_summary.reports_sent >= 15
        assert shard_summary.shares_received >= 15
        assert shard_summary.shares_refused == 0
        assert shard_summary.readings > 0 and shard_summary.setpoints_acked > 0
        # the share it followed last is the one the coordinator sent it last
        assert shard.shares[-1].park_target_kw == pytest.approx(summary.base_kw - STEP_KW)
        assert end.share_kw == pytest.approx(shard.shares[-1].power_kw)
        assert end.share_kw is not None
        assert end.low_kw - 1e-6 <= end.share_kw <= end.high_kw + 1e-6
    # the shares of every tick add up to the park target
    split = [s for s in summary.timeline if s.shares_kw and s.elapsed_s >= 0]
    assert split
    for sample in split:
        assert sum(sample.shares_kw.values()) == pytest.approx(sample.target_kw, abs=1e-3)
    # the park follows each step within the stated band by the step's end
    steps = evaluate_steps(
        [s for s in summary.timeline if s.elapsed_s >= 0], program, band_fraction=END_BAND_FRACTION
    )
    assert [s.label for s in steps] == ["hold", "up", "down"]
    assert [s.step_kw for s in steps[1:]] == pytest.approx([STEP_KW, -2 * STEP_KW])
    for step in steps[1:]:
        assert step.end_error_kw <= END_BAND_FRACTION * abs(step.step_kw), step
        assert step.settle_s is not None
    assert summary.saturated_ticks == 0


async def test_a_shard_lets_go_when_the_coordinator_stops(
    any_broker: tuple[int, Protocol], tmp_path: Path
) -> None:
    """A share expires unless renewed: without the coordinator the shard follows nothing."""
    port, protocol = any_broker
    path = tmp_path / "park.json"
    path.write_text(json.dumps(park_spec(port, protocol)))
    config = load_shard_config(path, "config/markets", ["e0"])
    clock = SystemClock()
    link = LinkSettings(port=port, prefix=PREFIX, protocol=protocol)
    shard = Shard("solo", config, clock=clock, link=link, options=ShardOptions(report_period_s=0.2))
    coordinator = Coordinator(
        link,
        clock=clock,
        options=CoordinatorOptions(period_s=0.2, share_validity_s=0.6, shards=("solo",)),
    )
    coordinator.targets.set_override(50.0, clock.now(), clock.now() + timedelta(hours=1))
    async with asyncio.TaskGroup() as group:
        shard_task = group.create_task(shard.run(), name="shard")
        await coordinator.run(duration_s=2.0)
        assert shard.share is not None
        assert shard.engine.targets.target_at(clock.now()) is not None
        await asyncio.sleep(1.0)  # longer than a share lives
        assert shard.share is None
        assert shard.engine.targets.target_at(clock.now()) is None
        shard.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await shard_task
