"""Secrets come only from the environment and never show up in logs, API answers or errors.

The engine runs for real (simulated assets, one MQTT gateway over TLS with a password taken
from the environment, the deployment's Mosquitto ACL, the API with tokens from VPP_API_TOKENS)
with every logger at DEBUG. Each secret is a random string, so finding it anywhere is a leak
and not a coincidence.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from adapters.mqtt import MqttAdapter, mqtt_adapters
from adapters.mqtt_device import MqttDeviceEmulator, sim_models
from adapters.sim import SimAdapter
from tests.brokers import MosquittoProcess, make_tls, mosquitto_available
from vpp.api import TokenError, TokenStore
from vpp.clock import SystemClock
from vpp.config import load_park
from vpp.engine import Engine, EngineOptions
from vpp.errors import AdapterError, ConfigError
from vpp.fleet import Fleet
from vpp.store import StorageError, Store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "tests/fixtures/small_park.yaml"
MARKETS = ROOT / "config/markets"
ACL = ROOT / "deploy/mosquitto/acl"
PASSWORD_ENV = "VPP_TEST_SECRET_MQTT_PASSWORD"
WAIT_S = 10.0


def secret(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex}"


OPERATOR_TOKEN = secret("operator-token")
ENTERPRISE_TOKEN = secret("enterprise-token")
MQTT_PASSWORD = secret("mqtt-engine")
GATEWAY_PASSWORD = secret("mqtt-gateway")
SECRETS = (OPERATOR_TOKEN, ENTERPRISE_TOKEN, MQTT_PASSWORD, GATEWAY_PASSWORD)


def leaked(text: str, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    return [s for s in secrets if s in text]


def park_with_gateway(directory: Path, port: int, ca_file: Path) -> Path:
    """The small test park plus an MQTT gateway of enterprise A over TLS with a password."""
    data: dict[str, Any] = yaml.safe_load(SMALL.read_text())
    enterprise = data["enterprises"][0]
    assert enterprise["id"] == "ent-a"
    enterprise["gateways"] = [
        {
            "id": "gw-a",
            "connection": {
                "adapter": "mqtt",
                "port": port,
                "protocol": "5",
                "tls": True,
                "ca_file": str(ca_file),
                "username": "_engine",
                "password_env": PASSWORD_ENV,
            },
        }
    ]
    enterprise["assets"].append(
        {
            "id": "bat-mqtt",
            "kind": "battery",
            "power_kw": 300,
            "capacity_kwh": 600,
            "connection": {"gateway": "gw-a"},
        }
    )
    data["engine"] = {"control_period_s": 0.5}
    path = directory / "park.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG (the libraries' too), captured; levels are restored afterwards."""
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp", "asyncio", "mqtt", "paho", "aiomqtt", "vpp", "adapters"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record, formatted with its arguments and any exception text."""
    lines = []
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    for record in caplog.records:
        lines.append(handler.format(record))
    return "\n".join(lines)


async def eventually(check: Any, timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110  (polls state other tasks own)
            await asyncio.sleep(0.05)


# --- the running engine -----------------------------------------------------------------------

if mosquitto_available():

    async def test_a_running_engine_never_shows_its_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, debug_logs: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv(
            "VPP_API_TOKENS", f"{OPERATOR_TOKEN}:operator,{ENTERPRISE_TOKEN}:enterprise:ent-a"
        )
        monkeypatch.setenv(PASSWORD_ENV, MQTT_PASSWORD)
        tls = make_tls(tmp_path / "tls")
        users = {"_engine": MQTT_PASSWORD, "ent-a": GATEWAY_PASSWORD}
        acl = (f"acl_file {ACL}",)
        with MosquittoProcess(
            tmp_path / "broker", tls=tls, users=users, extra_config=acl
        ) as broker:
            loaded = load_park(park_with_gateway(tmp_path, broker.port, tls.ca_file), MARKETS)
            clock = SystemClock()
            engine_adapters = [
                SimAdapter.from_park(loaded.park, clock, seed=3),
                *mqtt_adapters(loaded.park, clock),
            ]
            store = Store(f"sqlite:///{tmp_path / 'vpp.db'}")
            report: list[str] = []
            engine = Engine(
                loaded,
                clock,
                engine_adapters,
                options=EngineOptions(serve_api=True, listen="127.0.0.1:0", store=store),
                report=report.append,
                report_every_s=1.0,
            )
            gateway = MqttDeviceEmulator(
                host=broker.host,
                port=broker.port,
                enterprise_id="ent-a",
                endpoint_id="gw-a",
                devices=sim_models(loaded.park, {"bat-mqtt": "bat-mqtt"}),
                batched=True,
                period_s=0.2,
                username="ent-a",
                password=GATEWAY_PASSWORD,
                tls_context=ssl.create_default_context(cafile=str(tls.ca_file)),
            )
            try:
                async with asyncio.TaskGroup() as group:
                    runner = group.create_task(engine.run(), name="engine")
                    device = group.create_task(gateway.run(), name="gateway")
                    await eventually(lambda: engine.address is not None)
                    await eventually(lambda: engine.fleet.latest("bat-mqtt") is not None)
                    answers = await exercise_api(engine)
                    engine.stop()
                    summary = await runner
                    device.cancel()
            finally:
                store.close()

        mqtt = next(a for a in engine.adapters if isinstance(a, MqttAdapter))
        assert mqtt.health().state.value == "disconnected"  # it was stopped
        assert summary.readings_accepted > 0
        assert len(answers) >= 12
        for what, text in answers.items():
            assert leaked(text) == [], what
        logged = log_text(debug_logs)
        assert "DEBUG" in logged  # the capture did see debug records
        assert leaked(logged) == []
        assert leaked("\n".join(report)) == []


async def exercise_api(engine: Engine) -> dict[str, str]:
    """Public routes, authorised and refused calls; every answer's status, headers and body."""
    assert engine.address is not None
    host, port = engine.address
    base = f"http://{host}:{port}"
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    enterprise = {"Authorization": f"Bearer {ENTERPRISE_TOKEN}"}
    inline_secret = (
        "id: x\nname: x\nlocation: {latitude_deg: 0, longitude_deg: 0}\n"
        "grid_import_limit_kw: 1\nmarket: {rule_set: cn_provincial_spot}\n"
        "enterprises:\n  - id: e\n    name: e\n    connection_limit_kw: 1\n    gateways:\n"
        "      - id: g\n        connection: {adapter: mqtt, username: u, "
        f"password: {MQTT_PASSWORD}}}\n"
    )
    calls: list[tuple[str, str, dict[str, str], str | None, int]] = [
        ("GET", "/healthz", {}, None, 200),
        ("GET", "/openapi.json", {}, None, 200),
        ("GET", "/metrics", {}, None, 200),
        ("GET", "/", {}, None, 200),
        ("GET", "/api/v1/park", operator, None, 200),
        ("GET", "/api/v1/assets", operator, None, 200),
        ("GET", "/api/v1/assets", enterprise, None, 200),
        ("GET", "/api/v1/assets/bat-mqtt", enterprise, None, 200),
        ("GET", "/api/v1/assets/shift-b", enterprise, None, 403),
        ("GET", "/api/v1/assets?enterprise=ent-b", enterprise, None, 403),
        ("GET", "/api/v1/control", enterprise, None, 403),
        # a secret offered where a token belongs, or in the wrong scheme, is not echoed
        ("GET", "/api/v1/park", {"Authorization": f"Bearer {MQTT_PASSWORD}"}, None, 401),
        ("GET", "/api/v1/park", {"Authorization": f"Basic {OPERATOR_TOKEN}"}, None, 401),
        ("GET", "/api/v1/park", {"Authorization": OPERATOR_TOKEN}, None, 401),
        ("GET", "/api/v1/park", {"Authorization": f"Bearer {OPERATOR_TOKEN}x"}, None, 401),
        ("GET", f"/api/v1/park?token={OPERATOR_TOKEN}", operator, None, 400),
        # an enterprise may not act; an enrollment with a password written in is refused
        ("POST", "/api/v1/replan", enterprise, "{}", 403),
        ("POST", "/api/v1/enrollment/validate", operator, inline_secret, 422),
        ("POST", "/api/v1/enrollment/validate", operator, None, 200),
    ]
    answers: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for method, path, headers, body, expected in calls:
            content = {"Content-Type": "application/yaml"} if body and "enrollment" in path else {}
            if body == "{}":
                content = {"Content-Type": "application/json"}
            async with session.request(
                method, base + path, headers={**headers, **content}, data=body
            ) as response:
                text = await response.text()
                assert response.status == expected, (method, path, response.status, text)
                shown = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
                answers[f"{method} {path[:40]} {headers.get('Authorization', '')[:6]}"] = (
                    f"{response.status}\n{shown}\n{text}"
                )
        # the enterprise sees its own assets only
        async with session.get(base + "/api/v1/assets", headers=enterprise) as response:
            owners = {a["enterprise_id"] for a in (await response.json())["assets"]}
        assert owners == {"ent-a"}
    return answers


# --- errors that involve a secret ---------------------------------------------------------------

if mosquitto_available():

    async def test_a_wrong_mqtt_password_is_reported_without_the_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, debug_logs: pytest.LogCaptureFixture
    ) -> None:
        wrong = secret("wrong-password")
        monkeypatch.setenv(PASSWORD_ENV, wrong)
        tls = make_tls(tmp_path / "tls")
        users = {"_engine": MQTT_PASSWORD}
        with MosquittoProcess(tmp_path / "broker", tls=tls, users=users) as broker:
            loaded = load_park(park_with_gateway(tmp_path, broker.port, tls.ca_file), MARKETS)
            (adapter,) = mqtt_adapters(loaded.park, SystemClock())
            fleet = Fleet(loaded.park, SystemClock())
            task = asyncio.create_task(adapter.run(fleet), name="mqtt")
            try:
                await eventually(lambda: adapter.health().last_error != "")
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        error = adapter.health().last_error
        assert "authori" in error.lower()  # it does say what went wrong
        assert leaked(error + log_text(debug_logs), (wrong, MQTT_PASSWORD)) == []


def test_a_missing_password_variable_names_the_variable_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    loaded = load_park(park_with_gateway(tmp_path, 8883, tmp_path / "ca.crt"), MARKETS)
    with pytest.raises(AdapterError, match=PASSWORD_ENV):
        mqtt_adapters(loaded.park, SystemClock())


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("mqtt", "password"),
        ("mqtt", "Password"),
        ("http", "token"),
        ("mqtt", "secret"),
        ("http", "api_key"),
    ],
)
def test_a_config_with_a_secret_written_in_is_refused(tmp_path: Path, where: str, key: str) -> None:
    value = secret("inline")
    data: dict[str, Any] = yaml.safe_load(SMALL.read_text())
    connection: dict[str, Any] = (
        {"adapter": "mqtt", "username": "engine"}
        if where == "mqtt"
        else {"adapter": "http", "base_url": "https://ems.example/api"}
    )
    connection[key] = value
    data["enterprises"][0]["gateways"] = [{"id": "gw-a", "connection": connection}]
    path = tmp_path / "park.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as refused:
        load_park(path, MARKETS)
    problems = [str(p) for p in refused.value.problems]
    assert any(f"'{key}' must not be written in the file" in p for p in problems), problems
    assert any(f"{key}_env" in p for p in problems)
    assert leaked("\n".join(problems) + str(refused.value), (value,)) == []


def test_an_unknown_key_holding_a_secret_is_refused_without_its_value(tmp_path: Path) -> None:
    value = secret("inline")
    data: dict[str, Any] = yaml.safe_load(SMALL.read_text())
    data["engine"] = {"api_token": value}
    path = tmp_path / "park.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as refused:
        load_park(path, MARKETS)
    problems = "\n".join(str(p) for p in refused.value.problems)
    assert "api_token" in problems
    assert leaked(problems, (value,)) == []


@pytest.mark.parametrize(
    "entries",
    [
        "{token}",  # no role
        "{token}:superuser",  # unknown role
        "{token}:enterprise",  # enterprise role without enterprise
        "{token}:operator:ent-a",  # enterprise with another role
        "{token}:enterprise:bad/id",
        "{token}:operator,{token}:viewer",  # listed twice
    ],
)
def test_token_entries_are_refused_without_the_token(entries: str) -> None:
    token = secret("api-token")
    with pytest.raises(TokenError) as refused:
        TokenStore.parse(entries.format(token=token))
    assert "token entry" in str(refused.value)
    assert leaked(str(refused.value), (token,)) == []


def test_a_short_token_is_refused_without_the_token() -> None:
    with pytest.raises(TokenError, match="at least 16 characters") as refused:
        TokenStore.from_env({"VPP_API_TOKENS": "s3cr3t-sh0rt:operator"})
    assert "s3cr3t-sh0rt" not in str(refused.value)


def test_a_database_password_is_redacted_from_storage_errors() -> None:
    password = secret("db-password")
    # nothing listens on port 1 of loopback: the connection is refused at once
    with pytest.raises(StorageError) as refused:
        Store(f"postgresql://vpp:{password}@127.0.0.1:1/vpp")
    message = str(refused.value)
    assert "cannot connect" in message
    assert "127.0.0.1" in message
    assert leaked(message, (password,)) == []
