"""OpenADR 2.0b on loopback with openleadr peers: the engine as VEN, and the engine as VTN."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from openleadr import OpenADRClient, OpenADRServer

from market.openadr import (
    Flexibility,
    OadrEvent,
    OpenAdrError,
    OpenAdrVen,
    OpenAdrVtn,
    decide_opt,
    requested_reduction_kw,
)
from tests.observe import wait_until
from vpp.domain import DrEvent

pytestmark = [
    pytest.mark.integration,
    # openleadr 0.5.36 stores its server on the aiohttp app under a string key, which
    # aiohttp >= 3.9 warns about on every OpenADRServer(); the warning is openleadr's to fix.
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]

POLL = timedelta(seconds=1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _grid_vtn(port: int, accept: bool = True) -> tuple[OpenADRServer, list[list[Any]]]:
    reports: list[list[Any]] = []
    server = OpenADRServer(
        vtn_id="GRID-VTN",
        http_host="127.0.0.1",
        http_port=port,
        requested_poll_freq=POLL,
        show_fingerprint=False,
    )

    def register(payload: dict[str, Any]) -> tuple[str, str] | bool:
        return ("ven-park", "reg-park") if accept else False

    def register_report(
        ven_id: str,
        resource_id: str,
        measurement: str,
        unit: str,
        scale: str,
        min_sampling_interval: timedelta,
        max_sampling_interval: timedelta,
    ) -> tuple[Callable[[list[Any]], None], timedelta]:
        return reports.append, min_sampling_interval

    server.add_handler("on_create_party_registration", register)
    server.add_handler("on_register_report", register_report)
    return server, reports


async def test_the_engine_as_ven_opts_from_its_flexibility_and_reports_power() -> None:
    port = _free_port()
    server, reports = _grid_vtn(port)
    await server.run()
    opts: dict[str, str] = {}

    def answered(ven_id: str, event_id: str, opt_type: str) -> None:
        opts[event_id] = opt_type

    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    hour = timedelta(hours=1)
    for event_id, name, kind, payload in [
        ("small", "LOAD_DISPATCH", "delta", -300.0),  # 300 kW less: we hold 500
        ("large", "LOAD_DISPATCH", "delta", -900.0),  # more than we can hold
        ("simple", "SIMPLE", "level", 2.0),  # 75 % of what we hold
    ]:
        server.add_event(
            ven_id="ven-park",
            signal_name=name,
            signal_type=kind,
            intervals=[{"dtstart": start, "duration": hour, "signal_payload": payload}],
            callback=answered,
            event_id=event_id,
            market_context="oadr://grid/dr",
        )
    received: list[DrEvent] = []
    asked: list[tuple[datetime, datetime]] = []

    def flexibility(begin: datetime, end: datetime) -> Flexibility:
        asked.append((begin, end))
        return Flexibility(reduction_kw=500.0)

    ven = OpenAdrVen(
        vtn_url=f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
        ven_name="demo-park",
        product="grid-dr",
        flexibility=flexibility,
        measured_power_kw=lambda: 1234.5,
        on_event=received.append,
        price_per_mwh=600.0,
        report_interval=POLL,
    )
    try:
        await ven.start()
        assert ven.registered
        assert ven.ven_id == "ven-park"
        await wait_until(lambda: len(opts) == 3 and len(reports) >= 1, 10.0)
        server.cancel_event("ven-park", "small")
        await wait_until(lambda: not ven.events["small"].opted_in, 10.0)
    finally:
        await ven.stop()
        await server.stop()
    assert opts == {"small": "optIn", "large": "optOut", "simple": "optIn"}
    events: dict[str, DrEvent] = {}
    for event in received:
        events.setdefault(event.event_id, event)  # as first received
    assert events["small"].reduction_kw == 300.0
    assert events["small"].opted_in
    # The cancellation came back to the control loop as the same event, no longer opted in.
    assert received[-1].event_id == "small"
    assert not received[-1].opted_in
    assert events["large"].reduction_kw == 900.0
    assert not events["large"].opted_in
    assert events["simple"].reduction_kw == 375.0
    assert events["small"].product == "oadr://grid/dr"
    assert (events["small"].start, events["small"].end) == (start, start + hour)
    assert events["small"].invitation == "intraday"  # notified two hours ahead
    assert asked[0] == (start, start + hour)
    assert ven.events["large"] == events["large"]
    assert ven.events["small"] == received[-1]
    assert reports[0][0][1] == 1234.5  # kW, sent with the 'k' scale on W


async def test_a_refused_or_unreachable_registration_is_an_openadr_error() -> None:
    port = _free_port()
    server, _ = _grid_vtn(port, accept=False)
    await server.run()

    def make(url: str) -> OpenAdrVen:
        return OpenAdrVen(
            vtn_url=url,
            ven_name="demo-park",
            product="grid-dr",
            flexibility=lambda b, e: Flexibility(0.0),
            measured_power_kw=lambda: 0.0,
            on_event=lambda event: None,
        )

    try:
        refused = make(f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b")
        with pytest.raises(OpenAdrError, match="registration failed"):
            await refused.start()
        await refused.stop()
    finally:
        await server.stop()
    closed = f"http://127.0.0.1:{_free_port()}/OpenADR2/Simple/2.0b"
    unreachable = make(closed)
    with pytest.raises(OpenAdrError) as caught:
        await unreachable.start()
    assert str(caught.value) == (
        f"OpenADR {closed}: registration failed (VTN unreachable or refused)"
    )
    await unreachable.stop()


async def test_the_engine_as_vtn_dispatches_enterprise_vens() -> None:
    port = _free_port()
    vtn = OpenAdrVtn({"ent-a", "ent-b"}, port=port, poll_interval=POLL)
    await vtn.start()
    got: dict[str, list[dict[str, Any]]] = {"ent-a": [], "ent-b": []}
    clients: list[OpenADRClient] = []

    def client(name: str, answer: str, power_kw: float) -> OpenADRClient:
        peer = OpenADRClient(ven_name=name, vtn_url=vtn.url, show_fingerprint=False)

        async def on_event(event: dict[str, Any]) -> str:
            got[name].append(event)
            return answer

        peer.add_handler("on_event", on_event)
        peer.add_report(
            callback=lambda: power_kw,
            resource_id=f"{name}-meter",
            measurement="real_power",
            unit="W",
            scale="k",
            sampling_rate=POLL,
            report_duration=POLL,
        )
        clients.append(peer)
        return peer

    intruder = OpenADRClient(ven_name="intruder", vtn_url=vtn.url, show_fingerprint=False)
    try:
        await client("ent-a", "optIn", 250.0).run()
        await client("ent-b", "optOut", 80.0).run()
        await intruder.run()
        assert intruder.registration_id is None
        assert set(vtn.vens) == {"ent-a", "ent-b"}
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        event = DrEvent(
            "park-ev-1",
            "cn_peak_valley_dr",
            start,
            start + timedelta(hours=2),
            start - timedelta(hours=1),
            500.0,
            800.0,
        )
        with pytest.raises(OpenAdrError, match="no registered VEN for ent-c"):
            vtn.dispatch(event, {"ent-a": 300.0, "ent-c": 200.0})
        sent = vtn.dispatch(event, {"ent-a": 300.0, "ent-b": 200.0})
        assert sent == {"ent-a": "park-ev-1.ent-a", "ent-b": "park-ev-1.ent-b"}
        await wait_until(
            lambda: (
                vtn.opt("ent-a", sent["ent-a"]) is not None
                and vtn.opt("ent-b", sent["ent-b"]) is not None
                and len(vtn.power_kw()) == 2
            ),
            10.0,
        )
    finally:
        for peer in clients:
            await peer.stop()
        await vtn.stop()
    assert vtn.opt("ent-a", sent["ent-a"]) == "optIn"
    assert vtn.opt("ent-b", sent["ent-b"]) == "optOut"
    assert vtn.power_kw() == {"ent-a": 250.0, "ent-b": 80.0}
    (event_a,) = got["ent-a"]
    signal = event_a["event_signals"][0]
    assert (signal["signal_name"], signal["signal_type"]) == ("LOAD_DISPATCH", "delta")
    assert signal["intervals"][0]["signal_payload"] == -300.0
    assert event_a["active_period"]["dtstart"] == start
    assert event_a["active_period"]["duration"] == timedelta(hours=2)
    assert got["ent-b"][0]["event_signals"][0]["intervals"][0]["signal_payload"] == -200.0


def _event(name: str, kind: str, *payloads: float) -> OadrEvent:
    start = datetime(2026, 7, 1, 14, tzinfo=UTC)
    return OadrEvent(
        "e", 0, "far", "", start, start + timedelta(hours=1), name, kind, payloads, True
    )


@pytest.mark.parametrize(
    ("event", "requested"),
    [
        (_event("LOAD_DISPATCH", "delta", -200.0, -400.0), 400.0),
        (_event("LOAD_DISPATCH", "delta", 150.0), -150.0),  # draw more: valley filling
        (_event("LOAD_DISPATCH", "setpoint", 700.0), 300.0),  # park at 1000 kW now
        (_event("SIMPLE", "level", 1.0), 250.0),
        (_event("SIMPLE", "level", 0.0), 0.0),
    ],
)
def test_the_request_read_from_each_signal(event: OadrEvent, requested: float) -> None:
    assert requested_reduction_kw(event, Flexibility(500.0, 100.0), 1000.0) == requested


def test_unsupported_signals_are_refused() -> None:
    with pytest.raises(OpenAdrError, match="signal ELECTRICITY_PRICE is not supported"):
        requested_reduction_kw(_event("ELECTRICITY_PRICE", "price", 1.0), Flexibility(1.0), 0.0)
    with pytest.raises(OpenAdrError, match="SIMPLE level 7 is not one of 0-3"):
        requested_reduction_kw(_event("SIMPLE", "level", 7.0), Flexibility(1.0), 0.0)


def test_the_opt_decision_follows_the_flexibility_held() -> None:
    flex = Flexibility(reduction_kw=500.0, increase_kw=100.0)
    assert decide_opt(500.0, flex)
    assert not decide_opt(500.1, flex)
    assert decide_opt(-100.0, flex)
    assert not decide_opt(-150.0, flex)
    assert decide_opt(0.0, Flexibility(0.0))
