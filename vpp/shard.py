"""A shard: one engine process owning part of a park's fleet, steered by a coordinator.

A shard runs an ordinary `Engine` (MQTT adapters, fleet, control loop) over the enterprises it
owns. Which enterprises those are comes either from a static map (`ShardMap`: the shard loads
and enrolls only its enterprises) or from MQTT 5 shared subscriptions (every shard enrolls the
whole park, the broker splits the telemetry stream, and a shard controls the assets whose
telemetry it receives; see docs/scale-out.md for the broker setting this needs).

Every report period the shard publishes a `ShardReport` (measured power and the range its
assets can reach from their measured state) and follows the `Share` of the park target the
coordinator sends it, as an override of its own `TargetBook` that expires unless renewed.
Topics, under the park's MQTT topic prefix:

    <prefix>/_shards/<shard>/report     shard -> coordinator  every period        QoS 1
    <prefix>/_shards/<shard>/share      coordinator -> shard  every period        QoS 1
    <prefix>/_shards/<shard>/alive      shard, retained + last will: online/offline
    <prefix>/_coordinator/alive         coordinator, retained + last will
    <prefix>/_coordinator/park          coordinator: park target, measured, shares (QoS 0)

None of these ends in a leaf the MQTT adapter subscribes to (telemetry, batch, status, ack),
so the coordination traffic and the device traffic share one broker without crossing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import aiomqtt
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters._retry import Backoff
from adapters.base import Adapter
from adapters.mqtt import (
    ACK,
    BATCH,
    QOS_CONTROL,
    STATUS,
    TELEMETRY,
    MqttAdapter,
    MqttEndpoint,
    checked,
    mqtt_adapters,
    mqtt_endpoints,
)
from market.rules import DemandResponseRules, SpotMarketRules
from vpp.clock import Clock, SystemClock
from vpp.config import LoadedConfig, load_park
from vpp.config.loader import load_rule_set
from vpp.config.schema import MqttConnection, Park
from vpp.control import ControlOptions
from vpp.domain import Availability, Measurement
from vpp.engine import Engine, EngineOptions, RunSummary
from vpp.errors import ConfigError, PayloadError, Problem, VPPError
from vpp.limits import LimitModel, Snapshot
from vpp.metrics import Metrics
from vpp.store import Store

log = logging.getLogger(__name__)

SHARDS_NODE = "_shards"  # not a valid enterprise id, like adapters.mqtt.ENGINE_NODE
COORDINATOR_NODE = "_coordinator"
REPORT = "report"
SHARE = "share"
ALIVE = "alive"
PARK = "park"
ONLINE = b"online"
OFFLINE = b"offline"
QOS = 1


class ShardError(VPPError):
    """A shard or coordinator could not do its part; `shard` names which one."""

    def __init__(self, shard: str, message: str) -> None:
        self.shard = shard
        super().__init__(f"shard {shard}: {message}")


# --- which enterprises a shard owns ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardMap:
    """Static enterprise-to-shard map: shard id -> the enterprises it owns (each in one shard)."""

    shards: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        owner: dict[str, str] = {}
        for shard, enterprises in self.shards.items():
            for enterprise in enterprises:
                if enterprise in owner:
                    raise ConfigError(
                        [
                            Problem(
                                "shard map",
                                None,
                                f"shards.{shard}",
                                f"enterprise '{enterprise}' is already owned by '{owner[enterprise]}'",
                            )
                        ]
                    )
                owner[enterprise] = shard

    def enterprises_of(self, shard_id: str) -> tuple[str, ...]:
        if shard_id not in self.shards:
            known = ", ".join(sorted(self.shards))
            raise ConfigError(
                [Problem("shard map", None, "shards", f"no shard '{shard_id}' (known: {known})")]
            )
        return self.shards[shard_id]

    def shard_of(self, enterprise_id: str) -> str | None:
        for shard, enterprises in self.shards.items():
            if enterprise_id in enterprises:
                return shard
        return None

    @classmethod
    def balanced(cls, park: Park, count: int, prefix: str = "s") -> ShardMap:
        """`count` shards with about the same number of assets each (largest enterprises first)."""
        if count < 1:
            raise ValueError(f"ShardMap.balanced: count must be at least 1, not {count}")
        sizes: dict[str, int] = {e.id: 0 for e in park.enterprises}
        for enterprise, _asset in park.iter_assets():
            sizes[enterprise.id] += 1
        names = [f"{prefix}{k + 1}" for k in range(count)]
        load = dict.fromkeys(names, 0)
        owned: dict[str, list[str]] = {name: [] for name in names}
        for enterprise_id in sorted(sizes, key=lambda e: (-sizes[e], e)):
            lightest = min(names, key=lambda n: (load[n], n))
            owned[lightest].append(enterprise_id)
            load[lightest] += sizes[enterprise_id]
        return cls({name: tuple(owned[name]) for name in names})

    @classmethod
    def load(cls, path: Path | str) -> ShardMap:
        """Read `{shards: {s1: [e0, e1], s2: [e2]}}` from a YAML (or JSON) file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError([Problem(str(path), None, "", f"cannot read: {err}")]) from err
        except yaml.YAMLError as err:
            raise ConfigError([Problem(str(path), None, "", f"invalid YAML: {err}")]) from err
        try:
            parsed = _MapFile.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_problems(str(path), err)) from None
        try:
            return cls({k: tuple(v) for k, v in parsed.shards.items()})
        except ConfigError as err:
            raise ConfigError(
                [Problem(str(path), None, p.field, p.message) for p in err.problems]
            ) from None

    def dump(self, path: Path | str) -> None:
        data = {"shards": {k: list(v) for k, v in self.shards.items()}}
        Path(path).write_text(yaml.safe_dump(data, default_flow_style=None), encoding="utf-8")


class _MapFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shards: dict[str, list[str]] = Field(min_length=1)


def _problems(file: str, err: ValidationError) -> list[Problem]:
    return [Problem(file, None, ".".join(str(p) for p in e["loc"]), e["msg"]) for e in err.errors()]


def select_enterprises(park: Park, enterprise_ids: Collection[str]) -> Park:
    """The park with only `enterprise_ids` (and the park-level assets that name them)."""
    wanted = set(enterprise_ids)
    unknown = wanted - {e.id for e in park.enterprises}
    if unknown:
        raise ConfigError(
            [
                Problem(park.id, None, "enterprises", f"unknown enterprise '{e}' in the shard")
                for e in sorted(unknown)
            ]
        )
    return park.model_copy(
        update={
            "enterprises": [e for e in park.enterprises if e.id in wanted],
            "assets": [a for a in park.assets if a.enterprise in wanted],
        }
    )


def load_shard_config(
    path: Path | str,
    markets_dir: Path | str | None = None,
    enterprise_ids: Collection[str] | None = None,
) -> LoadedConfig:
    """Load a park config keeping only `enterprise_ids` (all when None).

    A `.json` file (the same schema as the YAML enrollment) is cut down to the shard's
    enterprises before validation, so a shard of a park with tens of thousands of assets
    validates only its own; its problems carry field paths but no line numbers. Any other
    file goes through `load_park` (line numbers in every problem) and is cut down after.
    """
    path = Path(path)
    if path.suffix.lower() != ".json":
        loaded = load_park(path, markets_dir)
        if enterprise_ids is None:
            return loaded
        return LoadedConfig(
            park=select_enterprises(loaded.park, enterprise_ids),
            path=loaded.path,
            spot=loaded.spot,
            dr=loaded.dr,
            markets_dir=loaded.markets_dir,
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {err}")]) from err
    except json.JSONDecodeError as err:
        raise ConfigError([Problem(str(path), err.lineno, "", f"invalid JSON: {err.msg}")]) from err
    if not isinstance(data, dict):
        raise ConfigError([Problem(str(path), None, "", "the park must be a JSON object")])
    if enterprise_ids is not None:
        wanted = set(enterprise_ids)
        listed = data.get("enterprises")
        if isinstance(listed, list):
            known = {e.get("id") for e in listed if isinstance(e, dict)}
            missing = sorted(wanted - known)
            if missing:
                raise ConfigError(
                    [
                        Problem(str(path), None, "enterprises", f"no enterprise '{e}'")
                        for e in missing
                    ]
                )
            data["enterprises"] = [
                e for e in listed if isinstance(e, dict) and e.get("id") in wanted
            ]
        assets = data.get("assets")
        if isinstance(assets, list):
            data["assets"] = [
                a for a in assets if isinstance(a, dict) and a.get("enterprise") in wanted
            ]
    try:
        park = Park.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_problems(str(path), err)) from None
    folder = Path(markets_dir) if markets_dir is not None else path.parent / "markets"
    spot = _rule_set(folder, park.market.rule_set, str(path))
    dr = None
    if park.market.dr_product is not None:
        dr = _rule_set(folder, park.market.dr_product, str(path))
    if not isinstance(spot, SpotMarketRules):
        raise ConfigError([Problem(str(path), None, "market.rule_set", "not a spot market")])
    if dr is not None and not isinstance(dr, DemandResponseRules):
        raise ConfigError(
            [Problem(str(path), None, "market.dr_product", "not a demand-response product")]
        )
    return LoadedConfig(park=park, path=path, spot=spot, dr=dr, markets_dir=folder)


def _rule_set(folder: Path, name: str, file: str) -> Any:
    rule_path = folder / f"{name}.yaml"
    if not rule_path.is_file():
        raise ConfigError([Problem(file, None, "market", f"unknown market rule set '{name}'")])
    return load_rule_set(rule_path)


def for_shard(park: Park, shard_id: str, shared_group: str | None = None) -> Park:
    """The park's MQTT connections made fit for one shard among several.

    A fixed `client_id` gets the shard id appended (two processes with one client id would
    take each other's session); with `shared_group`, telemetry is read through the MQTT 5
    shared subscription `$share/<group>/...` so the shards split the stream.
    """
    changed: dict[int, MqttConnection] = {}

    def fit(connection: MqttConnection) -> MqttConnection:
        key = id(connection)
        if key not in changed:
            update: dict[str, Any] = {}
            if connection.client_id is not None:
                update["client_id"] = f"{connection.client_id}-{shard_id}"
            if shared_group is not None:
                if connection.protocol != "5":
                    raise ConfigError(
                        [
                            Problem(
                                park.id,
                                None,
                                "connection.protocol",
                                'shared subscriptions need MQTT 5 (protocol: "5")',
                            )
                        ]
                    )
                update["shared_group"] = shared_group
            changed[key] = connection.model_copy(update=update) if update else connection
        return changed[key]

    enterprises = []
    for enterprise in park.enterprises:
        gateways = [
            g.model_copy(update={"connection": fit(g.connection)})
            if isinstance(g.connection, MqttConnection)
            else g
            for g in enterprise.gateways
        ]
        assets = [
            a.model_copy(update={"connection": fit(a.connection)})
            if isinstance(a.connection, MqttConnection)
            else a
            for a in enterprise.assets
        ]
        enterprises.append(enterprise.model_copy(update={"gateways": gateways, "assets": assets}))
    park_assets = [
        a.model_copy(update={"connection": fit(a.connection)})
        if isinstance(a.connection, MqttConnection)
        else a
        for a in park.assets
    ]
    return park.model_copy(update={"enterprises": enterprises, "assets": park_assets})


def mqtt_connection_of(park: Park) -> MqttConnection | None:
    """The first MQTT connection of the park (where its devices meet the engine)."""
    for enterprise in park.enterprises:
        for gateway in enterprise.gateways:
            if isinstance(gateway.connection, MqttConnection):
                return gateway.connection
        for asset in enterprise.assets:
            if isinstance(asset.connection, MqttConnection):
                return asset.connection
    return None


class EnterpriseMqttAdapter(MqttAdapter):
    """The MQTT adapter subscribed only to the subtrees of its own enterprises.

    A shard of a static map must not receive (and reject) the telemetry of every other
    shard: it subscribes `<prefix>/<enterprise>/+/<leaf>` for each enterprise it owns instead
    of the adapter's `<prefix>/+/+/<leaf>`.
    """

    def __init__(
        self,
        name: str,
        connection: MqttConnection,
        endpoints: Sequence[MqttEndpoint],
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(
            name, connection, endpoints, clock=clock, metrics=metrics, password=password
        )
        self.enterprise_ids = sorted({ep.enterprise_id for ep in endpoints})

    def subscriptions(self) -> list[tuple[str, int]]:
        c = self.connection
        prefix = c.topic_prefix
        shared = f"$share/{c.shared_group}/" if c.shared_group else ""
        out: list[tuple[str, int]] = []
        for enterprise in self.enterprise_ids:
            out += [
                (f"{shared}{prefix}/{enterprise}/+/{TELEMETRY}", c.telemetry_qos),
                (f"{shared}{prefix}/{enterprise}/+/{BATCH}", c.telemetry_qos),
                (f"{prefix}/{enterprise}/+/{STATUS}", QOS_CONTROL),
                (f"{prefix}/{enterprise}/+/{ACK}", QOS_CONTROL),
            ]
        return out


def shard_adapters(
    park: Park, clock: Clock, metrics: Metrics | None = None, *, whole_tree: bool = False
) -> list[Adapter]:
    """The MQTT adapters of a shard: one per broker connection of its enterprises.

    `whole_tree` (shared-subscription mode, where the shard enrolls the whole park) keeps
    the adapter's wildcard subscriptions; otherwise each adapter subscribes only to the
    enterprises it serves.
    """
    if whole_tree:
        return list(mqtt_adapters(park, clock, metrics))
    adapters: list[Adapter] = []
    for index, (connection, endpoints) in enumerate(mqtt_endpoints(park).items()):
        name = f"mqtt{index}" if index else "mqtt"
        adapters.append(
            EnterpriseMqttAdapter(name, connection, endpoints, clock=clock, metrics=metrics)
        )
    return adapters


# --- messages ----------------------------------------------------------------------------------


def report_topic(prefix: str, shard_id: str) -> str:
    return f"{prefix}/{SHARDS_NODE}/{shard_id}/{REPORT}"


def share_topic(prefix: str, shard_id: str) -> str:
    return f"{prefix}/{SHARDS_NODE}/{shard_id}/{SHARE}"


def shard_alive_topic(prefix: str, shard_id: str) -> str:
    return f"{prefix}/{SHARDS_NODE}/{shard_id}/{ALIVE}"


def coordinator_alive_topic(prefix: str) -> str:
    return f"{prefix}/{COORDINATOR_NODE}/{ALIVE}"


def park_topic(prefix: str) -> str:
    return f"{prefix}/{COORDINATOR_NODE}/{PARK}"


def _epoch(moment: datetime) -> float:
    return round(moment.timestamp(), 3)


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[1] = 1


class _ReportPayload(_Message):
    shard: str = Field(min_length=1)
    seq: int = Field(ge=0)
    at: float
    measured_kw: float = Field(allow_inf_nan=False)
    low_kw: float = Field(allow_inf_nan=False)
    high_kw: float = Field(allow_inf_nan=False)
    assets: int = Field(ge=0)
    fresh: int = Field(ge=0)
    controllable: int = Field(ge=0)
    share_kw: float | None = Field(default=None, allow_inf_nan=False)
    share_seq: int | None = None
    cycle_ms: float | None = Field(default=None, allow_inf_nan=False)
    readings: int = Field(default=0, ge=0)
    readings_per_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    enterprises: list[str] | None = None


class _SharePayload(_Message):
    shard: str = Field(min_length=1)
    seq: int = Field(ge=0)
    at: float
    power_kw: float = Field(allow_inf_nan=False)
    valid_until: float
    park_target_kw: float = Field(allow_inf_nan=False)
    announced_at: float
    label: str = ""


@dataclass(frozen=True, slots=True)
class ShardReport:
    """What a shard tells the coordinator each period (powers in kW, positive = drawn).

    `low_kw` / `high_kw` bound the shard's total power over the next few seconds from its
    measured state: assets that may not move count at their measured power, assets without
    fresh telemetry not at all. Up headroom is `high_kw - measured_kw`, down `measured_kw -
    low_kw`. `enterprises` lists the enterprises with fresh telemetry (shared-subscription
    mode only: it shows the coordinator whether two shards see the same devices).
    """

    shard_id: str
    seq: int
    at: datetime
    measured_kw: float
    low_kw: float
    high_kw: float
    assets: int
    fresh: int
    controllable: int
    share_kw: float | None = None
    share_seq: int | None = None
    cycle_ms: float | None = None
    readings: int = 0
    readings_per_s: float = 0.0
    enterprises: tuple[str, ...] | None = None

    @property
    def up_kw(self) -> float:
        return max(self.high_kw - self.measured_kw, 0.0)

    @property
    def down_kw(self) -> float:
        return max(self.measured_kw - self.low_kw, 0.0)

    def encode(self) -> bytes:
        return (
            _ReportPayload(
                shard=self.shard_id,
                seq=self.seq,
                at=_epoch(self.at),
                measured_kw=round(self.measured_kw, 3),
                low_kw=round(self.low_kw, 3),
                high_kw=round(self.high_kw, 3),
                assets=self.assets,
                fresh=self.fresh,
                controllable=self.controllable,
                share_kw=None if self.share_kw is None else round(self.share_kw, 3),
                share_seq=self.share_seq,
                cycle_ms=None if self.cycle_ms is None else round(self.cycle_ms, 3),
                readings=self.readings,
                readings_per_s=round(self.readings_per_s, 1),
                enterprises=None if self.enterprises is None else list(self.enterprises),
            )
            .model_dump_json(exclude_none=True)
            .encode()
        )

    @classmethod
    def decode(cls, raw: bytes | bytearray) -> ShardReport:
        try:
            p = _ReportPayload.model_validate_json(raw)
        except ValidationError as err:
            raise PayloadError("bad_report", f"bad shard report: {_first_error(err)}") from None
        return cls(
            shard_id=p.shard,
            seq=p.seq,
            at=_moment(p.at),
            measured_kw=p.measured_kw,
            low_kw=min(p.low_kw, p.measured_kw),
            high_kw=max(p.high_kw, p.measured_kw),
            assets=p.assets,
            fresh=p.fresh,
            controllable=p.controllable,
            share_kw=p.share_kw,
            share_seq=p.share_seq,
            cycle_ms=p.cycle_ms,
            readings=p.readings,
            readings_per_s=p.readings_per_s,
            enterprises=None if p.enterprises is None else tuple(p.enterprises),
        )


@dataclass(frozen=True, slots=True)
class Share:
    """The part of the park target a shard is to follow until `valid_until` (kW)."""

    shard_id: str
    seq: int
    at: datetime
    power_kw: float
    valid_until: datetime
    park_target_kw: float
    announced_at: datetime
    label: str = ""

    def encode(self) -> bytes:
        return (
            _SharePayload(
                shard=self.shard_id,
                seq=self.seq,
                at=_epoch(self.at),
                power_kw=round(self.power_kw, 3),
                valid_until=_epoch(self.valid_until),
                park_target_kw=round(self.park_target_kw, 3),
                announced_at=_epoch(self.announced_at),
                label=self.label,
            )
            .model_dump_json()
            .encode()
        )

    @classmethod
    def decode(cls, raw: bytes | bytearray) -> Share:
        try:
            p = _SharePayload.model_validate_json(raw)
        except ValidationError as err:
            raise PayloadError("bad_share", f"bad share: {_first_error(err)}") from None
        return cls(
            shard_id=p.shard,
            seq=p.seq,
            at=_moment(p.at),
            power_kw=p.power_kw,
            valid_until=_moment(p.valid_until),
            park_target_kw=p.park_target_kw,
            announced_at=_moment(p.announced_at),
            label=p.label,
        )


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


# --- the link to the broker --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Where shards and the coordinator meet: an MQTT 5 broker and the park's topic prefix."""

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "vpp"
    protocol: Literal["3.1.1", "5"] = "5"
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    timeout_s: float = 10.0

    @classmethod
    def of(cls, connection: MqttConnection, password: str | None = None) -> LinkSettings:
        return cls(
            host=connection.host,
            port=connection.port,
            prefix=connection.topic_prefix,
            protocol=connection.protocol,
            username=connection.username,
            password=password,
            keepalive_s=connection.keepalive_s,
            timeout_s=connection.timeout_s,
        )


Handler = Callable[[str, bytes], None]


class Link:
    """One MQTT client for the coordination topics; reconnects with jittered backoff.

    `run` keeps a session up, subscribes `topics`, announces `alive_topic` as online (retained,
    with an offline last will) and hands every message to `handler`; `publish` drops the
    message when there is no link (every message is periodic, the next one replaces it).
    """

    def __init__(
        self,
        settings: LinkSettings,
        client_id: str,
        alive_topic: str,
        topics: Sequence[str],
        handler: Handler,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.alive_topic = alive_topic
        self.topics = list(topics)
        self.handler = handler
        self.backoff = Backoff(base_s=0.2, cap_s=10.0)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.dropped = 0
        self._client: aiomqtt.Client | None = None

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except (aiomqtt.MqttError, OSError, TimeoutError) as err:
                log.warning("link %s: %s; reconnecting", self.client_id, err)
            self.connected.clear()
            self._client = None
            self.reconnects += 1
            await asyncio.sleep(self.backoff.next_delay())

    async def _session(self) -> None:
        s = self.settings
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=self.client_id,
            username=s.username,
            password=s.password,
            protocol=aiomqtt.ProtocolVersion.V5
            if s.protocol == "5"
            else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.alive_topic, OFFLINE, qos=QOS, retain=True),
            keepalive=s.keepalive_s,
            timeout=s.timeout_s,
        )
        async with asyncio.timeout(s.timeout_s):
            await checked(client.__aenter__())
        try:
            for name in self.topics:
                await checked(client.subscribe(name, QOS))
            await checked(client.publish(self.alive_topic, ONLINE, qos=QOS, retain=True))
            self._client = client
            self.connected.set()
            self.backoff.reset()
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray):
                    try:
                        self.handler(message.topic.value, bytes(payload))
                    except VPPError as err:
                        log.warning("link %s: %s", self.client_id, err)
        finally:
            self._client = None
            self.connected.clear()
            # A clean goodbye: the will is only for crashes.
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                async with asyncio.timeout(s.timeout_s):
                    await client.publish(self.alive_topic, OFFLINE, qos=QOS, retain=True)
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                async with asyncio.timeout(s.timeout_s):
                    await client.__aexit__(None, None, None)

    async def publish(self, name: str, body: bytes, qos: int = QOS) -> bool:
        client = self._client
        if client is None:
            self.dropped += 1
            return False
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await checked(client.publish(name, body, qos=qos))
        except (aiomqtt.MqttError, OSError, TimeoutError) as err:
            log.warning("link %s: publish on %s: %s", self.client_id, name, err)
            self.dropped += 1
            return False
        return True


# --- the envelope of a shard -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvelopeNow:
    """A shard's measured power and reachable range now (see `ShardReport`)."""

    measured_kw: float
    low_kw: float
    high_kw: float
    assets: int
    fresh: int
    controllable: int
    enterprises: tuple[str, ...]


class EnvelopeMeter:
    """Sums the fleet's fresh state and the per-asset limits (`vpp.limits`) into an envelope.

    The limits are those of a move held for `horizon_s` (energy) and reached within
    `reach_s` (ramps): the range the shard could be at by the time a new share has worked
    its way through, not merely within one control period.
    """

    def __init__(self, park: Park, fleet_view: FleetView, *, horizon_s: float, reach_s: float):
        self.model = LimitModel.from_park(park)
        self.fleet = fleet_view
        self.horizon_s = horizon_s
        self.reach_s = reach_s
        enterprise_of = {a.id: e.id for e, a in park.iter_assets()}
        self._enterprise_ids = sorted(set(enterprise_of.values()))
        index = {e: k for k, e in enumerate(self._enterprise_ids)}
        self._enterprise_index = np.array(
            [index[enterprise_of[a]] for a in self.model.asset_ids], dtype=np.int64
        )

    def measure(self, now: datetime) -> EnvelopeNow:
        n = self.model.n
        power = np.full(n, np.nan)
        soc = np.full(n, np.nan)
        temp = np.full(n, np.nan)
        fresh = np.zeros(n, dtype=np.bool_)
        degraded = np.zeros(n, dtype=np.bool_)
        fleet = self.fleet
        for i, asset_id in enumerate(self.model.asset_ids):
            m = fleet.fresh(asset_id, now)
            if m is None:
                continue
            fresh[i] = True
            power[i] = m.power_kw
            if m.soc_fraction is not None:
                soc[i] = m.soc_fraction
            if m.temperature_c is not None:
                temp[i] = m.temperature_c
            if fleet.availability(asset_id, now) is Availability.DEGRADED:
                degraded[i] = True
        limits = self.model.compute(
            Snapshot(power, soc, temp, fresh), now, horizon_s=self.horizon_s, period_s=self.reach_s
        )
        movable = limits.controllable & ~degraded
        held = np.where(fresh, power, 0.0)
        low = np.where(movable, limits.lower_kw, held)
        high = np.where(movable, limits.upper_kw, held)
        seen = np.unique(self._enterprise_index[fresh]).tolist()
        return EnvelopeNow(
            measured_kw=float(held.sum()),
            low_kw=float(low[fresh].sum()),
            high_kw=float(high[fresh].sum()),
            assets=n,
            fresh=int(fresh.sum()),
            controllable=int(movable.sum()),
            enterprises=tuple(self._enterprise_ids[k] for k in seen),
        )


class FleetView(Protocol):
    """What `EnvelopeMeter` reads of a fleet (vpp.fleet.Fleet has it)."""

    def fresh(self, asset_id: str, now: datetime | None = None) -> Measurement | None: ...

    def availability(self, asset_id: str, now: datetime | None = None) -> Availability: ...


# --- the shard process -------------------------------------------------------------------------


# A shard controls thousands of assets behind batched gateways. The fleet deadband keeps
# the loop's small corrections from re-sending every asset (what it holds back misses the
# allocation by at most 0.05 % of the shard's span), and more sends in flight let the
# setpoints of one step leave within a cycle rather than over several.
SHARD_CONTROL_OPTIONS = ControlOptions(
    fleet_deadband_fraction=0.0005, max_in_flight_per_adapter=2048
)


@dataclass(frozen=True, slots=True)
class ShardOptions:
    """How a shard reports and follows (seconds of clock time)."""

    report_period_s: float = 2.0
    envelope_horizon_s: float | None = None  # default: the park's setpoint validity
    envelope_reach_s: float = 10.0
    shared_group: str | None = None  # MQTT 5 shared subscriptions instead of a static map
    control_options: ControlOptions = SHARD_CONTROL_OPTIONS
    store: Store | None = None  # telemetry history of the shard's assets (PostgreSQL: shared)


@dataclass(frozen=True, slots=True)
class ShardSummary:
    """What a shard did over its run (the CLI prints it as JSON)."""

    shard_id: str
    enterprises: int
    assets: int
    wall_s: float
    readings: int
    readings_per_s: float
    cycles: int
    cycle_ms_p50: float | None
    cycle_ms_p95: float | None
    cycle_ms_max: float | None
    reports_sent: int
    shares_received: int
    shares_refused: int
    last_share_kw: float | None
    share_error_kw_p50: float | None  # |share - measured| over cycles with a share in force
    setpoints_sent: int
    setpoints_acked: int
    telemetry_latency_s_mean: float | None
    setpoint_ack_latency_s_mean: float | None
    cpu_s: float
    engine: RunSummary | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name == "engine":
                continue
            value = getattr(self, name)
            out[name] = round(value, 3) if isinstance(value, float) else value
        return out


class Shard:
    """One engine over the shard's enterprises, reporting to and steered by the coordinator."""

    def __init__(
        self,
        shard_id: str,
        config: LoadedConfig,
        *,
        clock: Clock | None = None,
        link: LinkSettings | None = None,
        options: ShardOptions | None = None,
        adapters: Sequence[Adapter] | None = None,
        metrics: Metrics | None = None,
        password: str | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.options = options if options is not None else ShardOptions()
        self.clock = clock if clock is not None else SystemClock()
        park = for_shard(config.park, shard_id, self.options.shared_group)
        self.config = LoadedConfig(
            park=park,
            path=config.path,
            spot=config.spot,
            dr=config.dr,
            markets_dir=config.markets_dir,
        )
        connection = mqtt_connection_of(park)
        if link is None:
            if connection is None:
                raise ShardError(
                    shard_id, "the park has no MQTT connection to meet the coordinator on"
                )
            link = LinkSettings.of(connection, password)
        self.link_settings = link
        self.metrics = metrics if metrics is not None else Metrics()
        if adapters is None:
            adapters = shard_adapters(
                park, self.clock, self.metrics, whole_tree=self.options.shared_group is not None
            )
        self.adapters = list(adapters)
        self.engine = Engine(
            self.config,
            self.clock,
            self.adapters,
            options=EngineOptions(
                control=True,
                control_options=self.options.control_options,
                prices=None,
                plan_today=False,
                plan_next_days=False,
                serve_api=False,
                store=self.options.store,
            ),
            metrics=self.metrics,
        )
        horizon = self.options.envelope_horizon_s or park.engine.setpoint_validity_s
        self.envelope = EnvelopeMeter(
            park, self.engine.fleet, horizon_s=horizon, reach_s=self.options.envelope_reach_s
        )
        prefix = link.prefix
        self._share_topic = share_topic(prefix, shard_id)
        self.link = Link(
            link,
            f"vpp-shard-{shard_id}",
            shard_alive_topic(prefix, shard_id),
            [self._share_topic, coordinator_alive_topic(prefix)],
            self._on_message,
        )
        self.shares: list[Share] = []
        self.shares_refused = 0
        self.reports_sent = 0
        self.coordinator_online: bool | None = None
        self.last_report: ShardReport | None = None
        self._share: Share | None = None
        self._seq = 0
        self._cycle_ms: list[float] = []
        self._share_errors: list[float] = []
        self._last_cycle = 0
        self._rate_mark: tuple[float, int] | None = None
        self.got_share = asyncio.Event()

    @property
    def share(self) -> Share | None:
        """The share in force (None before the first or after it expired)."""
        share = self._share
        if share is None or self.clock.now() >= share.valid_until:
            return None
        return share

    async def run(self, duration_s: float | None = None) -> ShardSummary:
        """Run the engine and the coordination link until stopped or `duration_s` passed."""
        started = time.monotonic()
        cpu_started = time.process_time()
        async with asyncio.TaskGroup() as group:
            engine_task = group.create_task(self.engine.run(duration_s), name="shard-engine")
            others = [
                group.create_task(self.link.run(), name="shard-link"),
                group.create_task(self._report_loop(), name="shard-report"),
                group.create_task(self._watch_cycles(), name="shard-cycles"),
            ]
            try:
                summary = await engine_task
            finally:
                for task in others:
                    task.cancel()
        return self._summary(summary, time.monotonic() - started, time.process_time() - cpu_started)

    def stop(self) -> None:
        self.engine.stop()

    # --- incoming ------------------------------------------------------------------------------

    def _on_message(self, name: str, raw: bytes) -> None:
        if name == self._share_topic:
            self._on_share(Share.decode(raw))
        elif name == coordinator_alive_topic(self.link_settings.prefix):
            self.coordinator_online = raw == ONLINE

    def _on_share(self, share: Share) -> None:
        now = self.clock.now()
        current = self._share
        if share.shard_id != self.shard_id:
            self.shares_refused += 1
            raise ShardError(self.shard_id, f"share for {share.shard_id!r} on our topic")
        if current is not None and share.seq <= current.seq and share.at <= current.at:
            self.shares_refused += 1  # late or repeated: a newer one is in force
            return
        if share.valid_until <= now:
            self.shares_refused += 1
            return
        self._share = share
        self.shares.append(share)
        # The share is an override of the shard's own target book: it expires by itself when
        # the coordinator stops renewing it, and the shard's loop then lets its assets go.
        self.engine.targets.set_override(
            share.power_kw,
            now,
            share.valid_until,
            notified_at=min(share.announced_at, now),
            label=f"share {share.seq}" + (f" ({share.label})" if share.label else ""),
        )
        self.got_share.set()

    # --- outgoing ------------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        period = self.options.report_period_s
        while True:
            report = self.make_report()
            self.last_report = report
            if await self.link.publish(
                report_topic(self.link_settings.prefix, self.shard_id), report.encode()
            ):
                self.reports_sent += 1
            await self.clock.sleep(period)

    def make_report(self) -> ShardReport:
        now = self.clock.now()
        envelope = self.envelope.measure(now)
        fleet = self.engine.fleet
        mark = (time.monotonic(), fleet.accepted)
        rate = 0.0
        if self._rate_mark is not None and mark[0] > self._rate_mark[0]:
            rate = (mark[1] - self._rate_mark[1]) / (mark[0] - self._rate_mark[0])
        self._rate_mark = mark
        share = self.share
        controller = self.engine.controller
        cycle = controller.last_report if controller is not None else None
        self._seq += 1
        return ShardReport(
            shard_id=self.shard_id,
            seq=self._seq,
            at=now,
            measured_kw=envelope.measured_kw,
            low_kw=envelope.low_kw,
            high_kw=envelope.high_kw,
            assets=envelope.assets,
            fresh=envelope.fresh,
            controllable=envelope.controllable,
            share_kw=None if share is None else share.power_kw,
            share_seq=None if share is None else share.seq,
            cycle_ms=None if cycle is None else cycle.compute_s * 1000.0,
            readings=fleet.accepted,
            readings_per_s=rate,
            enterprises=envelope.enterprises if self.options.shared_group else None,
        )

    async def _watch_cycles(self) -> None:
        """Keep every control cycle's compute time and, under a share, its tracking error."""
        controller = self.engine.controller
        if controller is None:
            return
        while True:
            report = await controller.wait_cycle(self._last_cycle)
            self._last_cycle = report.cycle
            self._cycle_ms.append(report.compute_s * 1000.0)
            if report.target_kw is not None and report.target_source == "override":
                self._share_errors.append(abs(report.target_kw - report.measured_kw))

    def _summary(self, engine: RunSummary, wall_s: float, cpu_s: float) -> ShardSummary:
        cycles = self._cycle_ms
        latency = _histogram_mean(self.metrics, "vpp_message_latency_seconds")
        share = self._share
        controller = self.engine.controller
        return ShardSummary(
            shard_id=self.shard_id,
            enterprises=len(self.config.park.enterprises),
            assets=len(self.engine.fleet),
            wall_s=wall_s,
            readings=engine.readings_accepted,
            readings_per_s=engine.readings_accepted / wall_s if wall_s > 0 else 0.0,
            cycles=len(cycles),
            cycle_ms_p50=statistics.median(cycles) if cycles else None,
            cycle_ms_p95=percentile(cycles, 0.95) if cycles else None,
            cycle_ms_max=max(cycles) if cycles else None,
            reports_sent=self.reports_sent,
            shares_received=len(self.shares),
            shares_refused=self.shares_refused,
            last_share_kw=None if share is None else share.power_kw,
            share_error_kw_p50=statistics.median(self._share_errors)
            if self._share_errors
            else None,
            setpoints_sent=controller.sent if controller is not None else 0,
            setpoints_acked=controller.acked if controller is not None else 0,
            telemetry_latency_s_mean=latency,
            setpoint_ack_latency_s_mean=_histogram_mean(
                self.metrics, "vpp_setpoint_ack_latency_seconds"
            ),
            cpu_s=cpu_s,
            engine=engine,
        )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def _histogram_mean(metrics: Metrics, name: str) -> float | None:
    """Mean of a histogram over all its label sets (from the metrics registry)."""
    total = count = 0.0
    for family in metrics.registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_sum":
                total += sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
    return total / count if count else None
