"""The device emulator's physics stepping and telemetry timing (no broker: a recording client)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.mqtt_device import MqttDeviceEmulator, sim_models
from vpp.clock import ManualClock
from vpp.config.schema import Park

START = datetime(2024, 1, 3, 2, 0, tzinfo=UTC)


def park() -> Park:
    return Park.model_validate(
        {
            "id": "t",
            "name": "test park",
            "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
            "grid_import_limit_kw": 10_000,
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": [
                {
                    "id": "e",
                    "name": "E",
                    "connection_limit_kw": 10_000,
                    "assets": [
                        {"id": "b1", "kind": "battery", "power_kw": 10, "capacity_kwh": 20},
                        {"id": "b2", "kind": "battery", "power_kw": 20, "capacity_kwh": 40},
                        {
                            "id": "l1",
                            "kind": "curtailable_load",
                            "profile": {"weekday_kw": [10.0] * 24},
                            "max_reduction_kw": 3,
                        },
                        {
                            "id": "pv1",
                            "kind": "pv",
                            "capacity_kwp": 50,
                        },
                    ],
                }
            ],
        }
    )


def emulator(clock: ManualClock, **extra: Any) -> MqttDeviceEmulator:
    ids = {"b1": "b1", "b2": "b2", "l1": "l1", "pv1": "pv1"}
    return MqttDeviceEmulator(
        host="127.0.0.1",
        port=1,
        enterprise_id="e",
        endpoint_id="gw",
        devices=sim_models(park(), ids, seed=7),
        batched=True,
        period_s=5.0,
        clock=clock,
        **extra,
    )


async def test_stepping_by_kind_reads_as_stepping_each_model() -> None:
    clock = ManualClock(START)
    gateway = emulator(clock)
    alone = sim_models(park(), {"b1": "b1", "b2": "b2", "l1": "l1", "pv1": "pv1"}, seed=7)
    for dt_s in (0.0, 5.0, 5.0, 5.0):  # the gateway's first step covers no time
        await clock.advance(dt_s)
        now = clock.now()
        for model in alone.values():
            model.step(now, dt_s)
        readings = gateway.step()
        assert [device for device, _ in readings] == list(alone)
        assert [m for _, m in readings] == [model.measure(now) for model in alone.values()]


async def advance(clock: ManualClock, seconds: float) -> None:
    await clock.advance(seconds)
    for _ in range(10):  # let the woken loop publish
        await asyncio.sleep(0)


class RecordingClient:
    def __init__(self) -> None:
        self.topics: list[str] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 0, **_: Any) -> None:
        self.topics.append(topic)


async def test_first_telemetry_waits_for_the_gateways_phase() -> None:
    clock = ManualClock(START)
    gateway = emulator(clock, phase_s=3.0)
    client = RecordingClient()
    gateway._client = client  # type: ignore[assignment]
    task = asyncio.create_task(gateway._telemetry_loop(client))  # type: ignore[arg-type]
    try:
        await advance(clock, 0.0)  # the loop starts its wait for the phase now
        await advance(clock, 2.0)
        assert client.topics == []
        await advance(clock, 1.0)
        assert client.topics == ["vpp/e/gw/batch"]
        await advance(clock, 5.0)
        assert len(client.topics) == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_negative_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="phase_s"):
        emulator(ManualClock(START), phase_s=-1.0)
