"""OpenADR 2.0b in both directions, on openleadr: the engine as a VEN and as a VTN.

As a VEN toward a utility or grid VTN, the engine registers, receives events (LOAD_DISPATCH,
SIMPLE), opts in or out from the flexibility the fleet can hold over the event, hands accepted
events to the control loop as `DrEvent`s and reports the park's measured power. As a VTN toward
the enterprises, whose own energy-management systems are VENs, it registers them, dispatches each
one its share of an event and collects their opt responses and power reports.

The event and opt logic is pure (`parse_event`, `requested_reduction_kw`, `decide_opt`); the two
classes do the network I/O and turn openleadr's failures into `OpenAdrError` in one place.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from openleadr import OpenADRClient, OpenADRServer, enums
from openleadr import errors as oadr_errors

from vpp.clock import Clock, SystemClock
from vpp.domain import DrEvent
from vpp.errors import VPPError

log = logging.getLogger(__name__)

OPT_IN = "optIn"
OPT_OUT = "optOut"
SUPPORTED_SIGNALS = ("LOAD_DISPATCH", "SIMPLE")
# SIMPLE levels 0-3 ask for no, moderate, high and special response: shares of what we can hold.
DEFAULT_SIMPLE_LEVELS: Mapping[int, float] = {0: 0.0, 1: 0.5, 2: 0.75, 3: 1.0}
_SCALE = {"none": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}


class OpenAdrError(VPPError):
    """An OpenADR exchange failed or a peer sent something unusable; `peer` names the other end."""

    def __init__(self, peer: str, message: str) -> None:
        self.peer = peer
        super().__init__(f"OpenADR {peer}: {message}")


@contextmanager
def _translated(peer: str, action: str) -> Iterator[None]:
    """The one place where openleadr's and aiohttp's exceptions become OpenAdrError."""
    try:
        yield
    except OpenAdrError:
        raise
    except (oadr_errors.ProtocolError, oadr_errors.FingerprintMismatch) as err:
        raise OpenAdrError(peer, f"{action}: {type(err).__name__}: {err}") from err
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        raise OpenAdrError(peer, f"{action}: {type(err).__name__}: {err}") from err
    except (ValueError, KeyError, TypeError) as err:
        raise OpenAdrError(peer, f"{action}: invalid data: {err}") from err


@dataclass(frozen=True, slots=True)
class Flexibility:
    """What the fleet can hold over an event's whole duration, in kW each way (both >= 0)."""

    reduction_kw: float
    increase_kw: float = 0.0


@dataclass(frozen=True, slots=True)
class OadrEvent:
    """The parts of an OpenADR event the engine acts on."""

    event_id: str
    modification_number: int
    status: str
    market_context: str
    start: datetime
    end: datetime
    signal_name: str
    signal_type: str
    payloads: tuple[float, ...]  # one per signal interval
    response_required: bool


def parse_event(event: Mapping[str, Any]) -> OadrEvent:
    """Read an openleadr event dict; raise OpenAdrError when it lacks what we need."""
    with _translated("VTN", "event"):
        descriptor = event["event_descriptor"]
        period = event["active_period"]
        signals = event["event_signals"]
        if not signals:
            raise OpenAdrError("VTN", f"event {descriptor['event_id']} carries no signal")
        signal = signals[0]
        start = period["dtstart"]
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        duration: timedelta = period["duration"]
        payloads = tuple(float(i["signal_payload"]) for i in signal["intervals"])
        return OadrEvent(
            event_id=str(descriptor["event_id"]),
            modification_number=int(descriptor.get("modification_number", 0)),
            status=str(descriptor.get("event_status", "far")),
            market_context=str(descriptor.get("market_context", "")),
            start=start,
            end=start + duration,
            signal_name=str(signal["signal_name"]),
            signal_type=str(signal["signal_type"]),
            payloads=payloads,
            response_required=event.get("response_required", "always") == "always",
        )


def requested_reduction_kw(
    event: OadrEvent,
    flexibility: Flexibility,
    measured_kw: float,
    simple_levels: Mapping[int, float] = DEFAULT_SIMPLE_LEVELS,
) -> float:
    """The reduction (negative: increase) the event asks of the park, in kW.

    LOAD_DISPATCH `delta` payloads are kW changes (negative = draw less); `setpoint` payloads are
    the park power wanted, measured against the park's power now; `level` and SIMPLE levels ask
    for a share of the flexibility the park can hold. The most demanding interval counts.
    """
    if event.signal_name not in SUPPORTED_SIGNALS:
        raise OpenAdrError("VTN", f"signal {event.signal_name} is not supported")
    if not event.payloads or not all(math.isfinite(p) for p in event.payloads):
        raise OpenAdrError("VTN", f"event {event.event_id} has no finite payload")
    if event.signal_name == "SIMPLE" or event.signal_type == "level":
        shares = []
        for payload in event.payloads:
            level = round(payload)
            if level not in simple_levels:
                raise OpenAdrError("VTN", f"SIMPLE level {payload:g} is not one of 0-3")
            shares.append(simple_levels[level])
        return max(shares) * flexibility.reduction_kw
    if event.signal_type == "delta":
        wanted = [-p for p in event.payloads]
    elif event.signal_type == "setpoint":
        wanted = [measured_kw - p for p in event.payloads]
    else:
        raise OpenAdrError("VTN", f"LOAD_DISPATCH type {event.signal_type} is not supported")
    return max(wanted, key=abs)


def decide_opt(requested_kw: float, flexibility: Flexibility, tolerance_kw: float = 1e-6) -> bool:
    """Opt in when the fleet can hold the requested change for the whole event."""
    if requested_kw > 0:
        return flexibility.reduction_kw + tolerance_kw >= requested_kw
    if requested_kw < 0:
        return flexibility.increase_kw + tolerance_kw >= -requested_kw
    return True  # nothing asked: taking part costs nothing


FlexibilityFn = Callable[[datetime, datetime], Flexibility]
EventFn = Callable[[DrEvent], Awaitable[None] | None]


class OpenAdrVen:
    """The engine as a VEN of a grid or utility VTN (HTTP pull, openleadr client)."""

    def __init__(
        self,
        vtn_url: str,
        ven_name: str,
        product: str,
        flexibility: FlexibilityFn,
        measured_power_kw: Callable[[], float],
        on_event: EventFn,
        price_per_mwh: float = 0.0,
        report_interval: timedelta = timedelta(seconds=10),
        simple_levels: Mapping[int, float] = DEFAULT_SIMPLE_LEVELS,
        clock: Clock | None = None,
        ven_id: str | None = None,
    ) -> None:
        self.vtn_url = vtn_url
        self.product = product
        self.price_per_mwh = price_per_mwh
        self._flexibility = flexibility
        self._measured = measured_power_kw
        self._on_event = on_event
        self._levels = simple_levels
        self._clock: Clock = clock or SystemClock()
        self.events: dict[str, DrEvent] = {}
        self._client = OpenADRClient(
            ven_name=ven_name, vtn_url=vtn_url, show_fingerprint=False, ven_id=ven_id
        )
        self._client.add_handler("on_event", self._handle_event)
        self._client.add_handler("on_update_event", self._handle_event)
        with _translated(vtn_url, "report set-up"):
            self._client.add_report(
                callback=self._report,
                resource_id=ven_name,
                measurement="real_power",
                unit="W",
                scale="k",
                sampling_rate=report_interval,
                report_duration=report_interval,
            )
        self._started = False

    @property
    def ven_id(self) -> str | None:
        return self._client.ven_id  # type: ignore[no-any-return]

    @property
    def registered(self) -> bool:
        return self._client.registration_id is not None

    async def start(self) -> None:
        """Register with the VTN, then poll and report in the background until `stop`."""
        with _translated(self.vtn_url, "registration"):
            await self._client.run()
        self._started = True
        if not self.registered:
            raise OpenAdrError(self.vtn_url, "registration failed (VTN unreachable or refused)")

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        with _translated(self.vtn_url, "stop"):
            if self._client.client_session is not None and not self._client.client_session.closed:
                await self._client.stop()

    def _report(self) -> float:
        return float(self._measured())

    async def _handle_event(self, event: dict[str, Any]) -> str:
        try:
            parsed = parse_event(event)
        except OpenAdrError as err:
            log.warning("opting out of an unreadable event: %s", err)
            return OPT_OUT
        if parsed.status == enums.EVENT_STATUS.CANCELLED:
            previous = self.events.get(parsed.event_id)
            if previous is not None:
                cancelled = _replace_opt(previous, opted_in=False)
                self.events[parsed.event_id] = cancelled
                await _call(self._on_event, cancelled)
            return OPT_OUT
        flexibility = self._flexibility(parsed.start, parsed.end)
        try:
            requested = requested_reduction_kw(parsed, flexibility, self._measured(), self._levels)
        except OpenAdrError as err:
            log.warning("opting out of event %s: %s", parsed.event_id, err)
            return OPT_OUT
        opted_in = decide_opt(requested, flexibility)
        dr_event = DrEvent(
            event_id=parsed.event_id,
            product=parsed.market_context or self.product,
            start=parsed.start,
            end=parsed.end,
            notified_at=self._clock.now(),
            reduction_kw=requested,
            price_per_mwh=self.price_per_mwh,
            invitation="day_ahead"
            if parsed.start - self._clock.now() >= timedelta(hours=12)
            else "intraday",
            opted_in=opted_in,
        )
        self.events[parsed.event_id] = dr_event
        log.info(
            "OpenADR event %s: %.1f kW asked, %.1f kW held: %s",
            parsed.event_id,
            requested,
            flexibility.reduction_kw,
            OPT_IN if opted_in else OPT_OUT,
        )
        await _call(self._on_event, dr_event)
        return OPT_IN if opted_in else OPT_OUT


def _replace_opt(event: DrEvent, opted_in: bool) -> DrEvent:
    return DrEvent(
        event_id=event.event_id,
        product=event.product,
        start=event.start,
        end=event.end,
        notified_at=event.notified_at,
        reduction_kw=event.reduction_kw,
        price_per_mwh=event.price_per_mwh,
        invitation=event.invitation,
        opted_in=opted_in,
    )


async def _call(callback: EventFn, event: DrEvent) -> None:
    result = callback(event)
    if result is not None:
        await result


@dataclass(slots=True)
class EnterpriseVen:
    """What the VTN knows of one enterprise's VEN."""

    enterprise: str
    ven_id: str
    registration_id: str
    power_kw: float | None = None
    reported_at: datetime | None = None
    opts: dict[str, str] = field(default_factory=dict)  # VTN event id -> optIn / optOut


class OpenAdrVtn:
    """The engine as a VTN for the enterprises' energy-management systems (openleadr server)."""

    def __init__(
        self,
        enterprises: Iterable[str],
        host: str = "127.0.0.1",
        port: int = 8080,
        vtn_id: str = "VPP-VTN",
        market_context: str = "oadr://vpp/park",
        poll_interval: timedelta = timedelta(seconds=10),
        clock: Clock | None = None,
    ) -> None:
        self.enterprises = frozenset(enterprises)
        self.host = host
        self.port = port
        self.market_context = market_context
        self._clock: Clock = clock or SystemClock()
        self.vens: dict[str, EnterpriseVen] = {}
        self._by_ven_id: dict[str, str] = {}
        # No ven_lookup: openleadr stores it on a class shared by every server in the process.
        self._server = OpenADRServer(
            vtn_id=vtn_id,
            http_host=host,
            http_port=port,
            requested_poll_freq=poll_interval,
            show_fingerprint=False,
        )
        self._server.add_handler("on_create_party_registration", self._register)
        self._server.add_handler("on_register_report", self._register_report)
        self._running = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/OpenADR2/Simple/2.0b"

    async def start(self) -> None:
        with _translated(self.url, "start"):
            await self._server.run()
        self._running = True

    async def stop(self) -> None:
        if self._running:
            self._running = False
            with _translated(self.url, "stop"):
                await self._server.stop()

    def dispatch(self, event: DrEvent, targets_kw: Mapping[str, float]) -> dict[str, str]:
        """Send each enterprise its share of `event` as a LOAD_DISPATCH delta event.

        Returns the OpenADR event id per enterprise. An enterprise that is unknown or has not
        registered yet is an OpenAdrError, raised before anything is queued.
        """
        missing = sorted(e for e in targets_kw if e not in self.vens)
        if missing:
            raise OpenAdrError(self.url, f"no registered VEN for {', '.join(missing)}")
        sent: dict[str, str] = {}
        duration = event.end - event.start
        for enterprise, target_kw in sorted(targets_kw.items()):
            ven = self.vens[enterprise]
            oadr_id = f"{event.event_id}.{enterprise}"
            with _translated(self.url, f"event for {enterprise}"):
                self._server.add_event(
                    ven_id=ven.ven_id,
                    signal_name="LOAD_DISPATCH",
                    signal_type="delta",
                    intervals=[
                        {"dtstart": event.start, "duration": duration, "signal_payload": -target_kw}
                    ],
                    callback=self._opt_callback(enterprise),
                    event_id=oadr_id,
                    market_context=self.market_context,
                )
            sent[enterprise] = oadr_id
        return sent

    def cancel(self, oadr_event_ids: Mapping[str, str]) -> None:
        """Cancel events sent by `dispatch` (enterprise -> OpenADR event id)."""
        for enterprise, oadr_id in oadr_event_ids.items():
            with _translated(self.url, f"cancel for {enterprise}"):
                self._server.cancel_event(self.vens[enterprise].ven_id, oadr_id)

    def opt(self, enterprise: str, oadr_event_id: str) -> str | None:
        """The enterprise's answer to an event: optIn, optOut, or None while it has not said."""
        ven = self.vens.get(enterprise)
        return ven.opts.get(oadr_event_id) if ven is not None else None

    def power_kw(self) -> dict[str, float]:
        """The last power each enterprise reported, in kW."""
        return {e: v.power_kw for e, v in self.vens.items() if v.power_kw is not None}

    def _register(self, payload: Mapping[str, Any]) -> tuple[str, str] | bool:
        name = str(payload.get("ven_name", ""))
        if name not in self.enterprises:
            log.warning("refusing OpenADR registration of unknown VEN %r", name)
            return False
        known = self.vens.get(name)
        if known is None:
            known = EnterpriseVen(name, f"ven-{name}", f"reg-{name}")
            self.vens[name] = known
            self._by_ven_id[known.ven_id] = name
        return known.ven_id, known.registration_id

    def _register_report(
        self,
        ven_id: str,
        resource_id: str,
        measurement: str,
        unit: str | None,
        scale: str | None,
        min_sampling_interval: timedelta,
        max_sampling_interval: timedelta,
    ) -> tuple[Callable[[list[tuple[datetime, float]]], None], timedelta] | None:
        enterprise = self._by_ven_id.get(ven_id)
        if enterprise is None or unit != "W":
            return None
        factor = _SCALE.get(scale or "none", 1.0) / 1000.0

        def receive(values: list[tuple[datetime, float]]) -> None:
            if not values:
                return
            moment, value = max(values, key=lambda v: v[0])
            ven = self.vens[enterprise]
            ven.power_kw = float(value) * factor
            ven.reported_at = moment

        return receive, min_sampling_interval

    def _opt_callback(self, enterprise: str) -> Callable[..., None]:
        def record(ven_id: str, event_id: str, opt_type: str) -> None:
            self.vens[enterprise].opts[event_id] = opt_type

        return record
