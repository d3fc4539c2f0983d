"""The one interface every adapter implements, and the sink adapters deliver telemetry to."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from vpp.domain import Measurement, Setpoint, SetpointAck


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class AdapterHealth:
    """What an adapter reports about its link to its peer."""

    name: str
    state: ConnectionState
    reconnects: int = 0
    last_error: str = ""
    last_message_at: datetime | None = None


class TelemetrySink(Protocol):
    """Where adapters deliver what they read; every method is non-blocking and cheap."""

    def accept(self, adapter: str, measurements: Sequence[Measurement]) -> int:
        """Take a batch of decoded measurements; return how many were accepted.

        Unknown assets, bad values and stale or future timestamps are rejected and counted.
        """

    def reject(self, adapter: str, reason: str, detail: str) -> None:
        """Count a payload that could not be decoded; `reason` is a short metric label."""

    def set_available(self, asset_id: str, available: bool, at: datetime) -> None:
        """Record an availability change (retained status, last will, device flag)."""


class Adapter(abc.ABC):
    """Talks to a set of assets over one protocol.

    `run` connects and streams telemetry into the sink until cancelled, reconnecting with
    jittered capped backoff; `send` delivers one setpoint and returns the device's ack, or a
    refused ack (reason `timeout`, `disconnected`, ...) when none came within the timeout.
    """

    name: str

    @property
    @abc.abstractmethod
    def asset_ids(self) -> frozenset[str]:
        """The assets this adapter serves."""

    @abc.abstractmethod
    async def run(self, sink: TelemetrySink) -> None:
        """Connect and deliver telemetry until cancelled."""

    @abc.abstractmethod
    async def send(self, setpoint: Setpoint) -> SetpointAck:
        """Send a setpoint (already clamped and not expired) and wait for its ack."""

    @abc.abstractmethod
    def health(self) -> AdapterHealth:
        """The adapter's link state right now."""
