"""Broker fixtures: a private Mosquitto per test, the embedded amqtt broker, or either; and
the small test park's fleet (`fleet`, `metrics`).

`broker` is parametrised over the brokers this machine has: Mosquitto (MQTT 5) when
/usr/sbin/mosquitto exists, and always the embedded amqtt broker (MQTT 3.1.1 only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokers import AmqttBroker, MosquittoProcess, mosquitto_available
from vpp.clock import SystemClock
from vpp.config import load_park
from vpp.fleet import Fleet
from vpp.metrics import Metrics

BROKER_KINDS = ["mosquitto", "amqtt"] if mosquitto_available() else ["amqtt"]


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """Where a test's broker listens and the newest MQTT version it speaks."""

    kind: str
    host: str
    port: int
    protocol: str  # "5" or "3.1.1"


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
async def amqtt_broker() -> AsyncIterator[AmqttBroker]:
    async with AmqttBroker() as broker:
        yield broker


@pytest.fixture(params=BROKER_KINDS)
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrokerInfo]:
    if request.param == "mosquitto":
        with MosquittoProcess(tmp_path / "mosquitto") as mosquitto:
            yield BrokerInfo("mosquitto", mosquitto.host, mosquitto.port, "5")
    else:
        async with AmqttBroker() as amqtt:
            yield BrokerInfo("amqtt", amqtt.host, amqtt.port, "3.1.1")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def fleet(metrics: Metrics) -> Fleet:
    """The small test park's fleet on the system clock, counting into `metrics`."""
    park = load_park("tests/fixtures/small_park.yaml", markets_dir="config/markets").park
    return Fleet(park, SystemClock(), metrics=metrics)
