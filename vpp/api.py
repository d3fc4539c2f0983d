"""HTTP API of the engine (aiohttp): park state, plans, market positions, carbon, and a few writes.

`create_app` builds the application from the engine's read model (`EngineState`), the fleet,
the metrics, the API tokens and the engine's `Actions`; the engine serves it with an AppRunner.
Every route is declared once in a table of `Endpoint`s, from which the handlers, the role checks
and the OpenAPI 3.1 document (/openapi.json) all come. Every refused request gets a JSON body
`{"error": "..."}` and a fitting status, and is counted in `vpp_api_rejected_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from vpp import __version__
from vpp.assets import static_limits
from vpp.carbon import EnergyCarbonTotals
from vpp.config import LoadedConfig, load_park
from vpp.config.schema import ID_PATTERN
from vpp.domain import AssetKind, Availability
from vpp.errors import ConfigError, VPPError
from vpp.fleet import Fleet
from vpp.metrics import Metrics
from vpp.state import DrEventView, DrStatus, EngineState, StateError

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 1024 * 1024
TOKENS_ENV = "VPP_API_TOKENS"
TOKENS_FILE_ENV = "VPP_API_TOKENS_FILE"
ANONYMOUS_ENV = "VPP_API_ANONYMOUS"
DASHBOARD_FILES = {
    "app.js": "text/javascript",
    "charts.js": "text/javascript",
    "style.css": "text/css",
}


# --- authentication ---------------------------------------------------------------------------


class Role(StrEnum):
    """Who a token speaks for."""

    OPERATOR = "operator"  # the aggregator: reads everything, may act
    VIEWER = "viewer"  # the park energy manager's screen: reads everything, may not act
    ENTERPRISE = "enterprise"  # one enterprise: reads its own data only


READ_ALL = frozenset({Role.OPERATOR, Role.VIEWER})
READ_ANY = frozenset(Role)
WRITE = frozenset({Role.OPERATOR})


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request, as its token says."""

    name: str  # for logs: role and entry number, never the token
    role: Role
    enterprise_id: str | None = None


class TokenError(VPPError):
    """A token entry cannot be read; the message never contains the token."""


@dataclass(frozen=True, slots=True)
class TokenStore:
    """API tokens, kept only as SHA-256 digests; `anonymous` serves requests without a token."""

    principals: Mapping[str, Principal] = field(default_factory=dict)
    anonymous: Principal | None = None

    @classmethod
    def parse(cls, text: str, anonymous: Principal | None = None) -> TokenStore:
        """Entries `token:role[:enterprise_id]`, separated by commas, spaces or new lines.

        Lines starting with '#' are comments. Tokens must be at least 16 characters.
        """
        principals: dict[str, Principal] = {}
        entries = [
            entry
            for line in text.splitlines()
            if not line.strip().startswith("#")
            for entry in re.split(r"[,\s]+", line.strip())
            if entry
        ]
        for number, entry in enumerate(entries, start=1):
            parts = entry.split(":")
            if len(parts) not in (2, 3):
                raise TokenError(f"token entry {number}: expected token:role[:enterprise_id]")
            token, role_name = parts[0], parts[1]
            if len(token) < 16:
                raise TokenError(f"token entry {number}: a token has at least 16 characters")
            try:
                role = Role(role_name)
            except ValueError:
                raise TokenError(
                    f"token entry {number}: unknown role {role_name!r} "
                    f"(expected {', '.join(r.value for r in Role)})"
                ) from None
            enterprise = parts[2] if len(parts) == 3 else None
            if (role is Role.ENTERPRISE) != (enterprise is not None):
                raise TokenError(
                    f"token entry {number}: an enterprise id goes with role 'enterprise' only"
                )
            if enterprise is not None and not re.match(ID_PATTERN, enterprise):
                raise TokenError(f"token entry {number}: bad enterprise id")
            digest = _digest(token)
            if digest in principals:
                raise TokenError(f"token entry {number}: the same token is listed twice")
            principals[digest] = Principal(f"{role.value}#{number}", role, enterprise)
        return cls(principals, anonymous)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenStore:
        """Tokens from VPP_API_TOKENS, or from the file named by VPP_API_TOKENS_FILE.

        Without any token, read-only anonymous access (role viewer) is allowed unless
        VPP_API_ANONYMOUS=none; VPP_API_ANONYMOUS=viewer allows it alongside tokens.
        """
        env = os.environ if environ is None else environ
        text = env.get(TOKENS_ENV, "")
        file_name = env.get(TOKENS_FILE_ENV)
        if file_name:
            try:
                text += "\n" + Path(file_name).read_text(encoding="utf-8")
            except OSError as err:
                raise TokenError(
                    f"{TOKENS_FILE_ENV}: cannot read {file_name}: {err.strerror}"
                ) from err
        anonymous_setting = env.get(ANONYMOUS_ENV, "").strip().lower()
        if anonymous_setting not in ("", "none", "viewer"):
            raise TokenError(f"{ANONYMOUS_ENV} must be 'none' or 'viewer'")
        store = cls.parse(text)
        allow = anonymous_setting == "viewer" or (not store.principals and anonymous_setting == "")
        if allow:
            if not store.principals:
                log.warning("no API tokens configured: reads are open, writes are refused")
            return cls(store.principals, Principal("anonymous", Role.VIEWER))
        return store

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None:
            if self.anonymous is not None:
                return self.anonymous
            raise ApiError(401, "unauthorized", "missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "authorization must be 'Bearer <token>'")
        principal = self.principals.get(_digest(token.strip()))
        if principal is None:
            raise ApiError(401, "unauthorized", "invalid bearer token")
        return principal


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """A request the API refuses: HTTP status, a metric label and a one-line message."""

    def __init__(
        self, status: int, reason: str, message: str, problems: list[str] | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.problems = problems
        super().__init__(message)


_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


# --- actions the engine provides --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrollmentCheck:
    """A valid enrollment, summarised."""

    park_id: str
    enterprises: int
    assets: int
    path: str


class Actions(Protocol):
    """What the API may ask the engine to do. Refusals raise StateError (status) or ConfigError."""

    async def validate_enrollment(self, yaml_text: str | None) -> EnrollmentCheck:
        """Check an enrollment: the given YAML text, or the engine's config file when None."""

    async def reload_enrollment(self) -> EnrollmentCheck:
        """Reload the engine's config file and apply it."""

    async def replan(self, reason: str, carbon_price_per_t: float | None) -> str:
        """Ask for a new schedule now; returns a ticket id. 409 while one is pending."""

    async def acknowledge_dr_event(self, event_id: str, by: str, note: str) -> DrEventView:
        """Confirm the park will respond to the event."""

    async def opt_out_dr_event(self, event_id: str, by: str, reason: str) -> DrEventView:
        """Decline the event before it starts."""


def check_enrollment_text(text: str, markets_dir: Path) -> LoadedConfig:
    """Validate enrollment YAML given as text; includes are refused (they would read files)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # the full loader reports the error with its line
    if _has_include(data):
        raise StateError(422, "'include' is not allowed in an uploaded enrollment")
    with tempfile.TemporaryDirectory(prefix="vpp-enroll-") as folder:
        path = Path(folder) / "enrollment.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            return load_park(path, markets_dir)
        except ConfigError as err:
            for problem in err.problems:
                if problem.file == str(path):
                    object.__setattr__(problem, "file", "enrollment.yaml")
            raise


def _has_include(data: Any) -> bool:
    if isinstance(data, dict):
        return set(data) == {"include"} or any(_has_include(v) for v in data.values())
    if isinstance(data, list):
        return any(_has_include(v) for v in data)
    return False


class StateActions:
    """`Actions` on top of the engine state: DR decisions are recorded in the state, reloads
    replace the park, and a replan request is queued for the planning loop to take.

    `on_reload` and `on_dr_change` let the engine apply a new config and tell the market.
    """

    def __init__(
        self,
        state: EngineState,
        now: Callable[[], datetime],
        config_path: Path,
        markets_dir: Path | None = None,
        on_reload: Callable[[LoadedConfig], Awaitable[None]] | None = None,
        on_dr_change: Callable[[DrEventView], Awaitable[None]] | None = None,
    ) -> None:
        self.state = state
        self.now = now
        self.config_path = config_path
        self.markets_dir = (
            markets_dir if markets_dir is not None else config_path.parent / "markets"
        )
        self.on_reload = on_reload
        self.on_dr_change = on_dr_change
        self._pending: tuple[str, str, float | None] | None = None
        self._requested = asyncio.Event()
        self._tickets = 0

    async def validate_enrollment(self, yaml_text: str | None) -> EnrollmentCheck:
        if yaml_text is None:
            loaded = await asyncio.to_thread(load_park, self.config_path, self.markets_dir)
            return _check_of(loaded, str(self.config_path))
        loaded = await asyncio.to_thread(check_enrollment_text, yaml_text, self.markets_dir)
        return _check_of(loaded, "(uploaded)")

    async def reload_enrollment(self) -> EnrollmentCheck:
        loaded = await asyncio.to_thread(load_park, self.config_path, self.markets_dir)
        if self.on_reload is not None:
            await self.on_reload(loaded)
        self.state.publish_park(loaded.park, str(self.config_path))
        return _check_of(loaded, str(self.config_path))

    async def replan(self, reason: str, carbon_price_per_t: float | None) -> str:
        if self._pending is not None:
            raise StateError(409, f"a replan is already pending (ticket {self._pending[0]})")
        self._tickets += 1
        ticket = f"replan-{self._tickets}"
        self._pending = (ticket, reason, carbon_price_per_t)
        self._requested.set()
        return ticket

    async def next_replan(self) -> tuple[str, str, float | None]:
        """For the planning loop: wait for a request and take it (ticket, reason, carbon price)."""
        await self._requested.wait()
        self._requested.clear()
        assert self._pending is not None
        request, self._pending = self._pending, None
        self.state.replans += 1
        return request

    async def acknowledge_dr_event(self, event_id: str, by: str, note: str) -> DrEventView:
        view = self.state.acknowledge_dr_event(event_id, by, self.now(), note)
        if self.on_dr_change is not None:
            await self.on_dr_change(view)
        return view

    async def opt_out_dr_event(self, event_id: str, by: str, reason: str) -> DrEventView:
        view = self.state.opt_out_dr_event(event_id, by, self.now(), reason)
        if self.on_dr_change is not None:
            await self.on_dr_change(view)
        return view


def _check_of(loaded: LoadedConfig, path: str) -> EnrollmentCheck:
    park = loaded.park
    return EnrollmentCheck(park.id, len(park.enterprises), len(park.iter_assets()), path)


# --- request and response schemas -------------------------------------------------------------


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Text = Annotated[str, Field(min_length=1, max_length=500)]
EnterpriseId = Annotated[str, Field(pattern=ID_PATTERN)]


class ErrorOut(ApiModel):
    """Every refused request: a one-line message, and for config errors the problems."""

    error: str
    problems: list[str] | None = None


class EnterpriseQuery(ApiModel):
    enterprise: EnterpriseId | None = None


class AssetQuery(ApiModel):
    enterprise: EnterpriseId | None = None
    kind: AssetKind | None = None
    availability: Availability | None = None


class HistoryQuery(ApiModel):
    limit: int = Field(default=300, ge=1, le=2000)


class AckIn(ApiModel):
    note: Annotated[str, Field(max_length=500)] = ""


class OptOutIn(ApiModel):
    reason: Text


class ReplanIn(ApiModel):
    reason: Text
    carbon_price_per_t: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)] | None = None


class AvailabilityCounts(ApiModel):
    available: int
    stale: int
    offline: int
    unknown: int
    degraded: int


class ParkOut(ApiModel):
    id: str
    name: str
    timezone: str
    version: str
    as_of: datetime
    grid_import_limit_kw: float
    grid_export_limit_kw: float
    market_rule_set: str
    dr_product: str | None
    enterprises: list[str]
    assets: int
    power_kw: float
    target_kw: float | None
    counts: AvailabilityCounts


class EnterpriseOut(ApiModel):
    id: str
    name: str
    industry: str
    connection_limit_kw: float
    assets: int
    power_kw: float
    by_kind_kw: dict[str, float]
    counts: AvailabilityCounts


class EnterprisesOut(ApiModel):
    enterprises: list[EnterpriseOut]


class AssetOut(ApiModel):
    id: str
    name: str
    enterprise_id: str
    kind: AssetKind
    availability: Availability
    min_kw: float
    max_kw: float
    power_kw: float | None
    soc_fraction: float | None
    temperature_c: float | None
    last_seen: datetime | None


class AssetsOut(ApiModel):
    assets: list[AssetOut]


class ScheduleOut(ApiModel):
    computed_at: datetime
    start: datetime
    interval_min: int
    status: str
    objective: float | None
    carbon_price_per_t: float | None
    park_kw: list[float] | None  # None for an enterprise caller: the park plan is not its data
    assets: dict[str, list[float]]


class ScheduleResponse(ApiModel):
    schedule: ScheduleOut | None


class EnvelopeOut(ApiModel):
    computed_at: datetime
    start: datetime
    interval_min: int
    expected_kw: list[float]
    min_kw: list[float]
    max_kw: list[float]


class EnvelopeResponse(ApiModel):
    envelope: EnvelopeOut | None


class BidStepOut(ApiModel):
    price_up_to_per_mwh: float
    power_kw: float


class BidCurveOut(ApiModel):
    interval_start: datetime
    interval_min: float
    steps: list[BidStepOut]


class DrOfferOut(ApiModel):
    interval_start: datetime
    interval_min: float
    reduction_kw: float
    price_per_mwh: float


class PricesOut(ApiModel):
    start: datetime
    interval_min: int
    price_per_mwh: list[float]
    kind: str
    currency: str


class BidsResponse(ApiModel):
    computed_at: datetime | None
    curves: list[BidCurveOut]
    dr_offers: list[DrOfferOut]
    prices: PricesOut | None


class AwardOut(ApiModel):
    interval_start: datetime
    interval_min: float
    market: str
    power_kw: float
    price_per_mwh: float


class AwardsResponse(ApiModel):
    awards: list[AwardOut]


class DrEventOut(ApiModel):
    event_id: str
    product: str
    start: datetime
    end: datetime
    notified_at: datetime
    reduction_kw: float
    price_per_mwh: float
    invitation: str
    opted_in: bool
    status: DrStatus
    changed_at: datetime | None
    changed_by: str
    note: str


class DrEventsResponse(ApiModel):
    events: list[DrEventOut]


class SettlementOut(ApiModel):
    enterprise_id: str
    reference: str
    start: datetime
    end: datetime
    baseline_kwh: float
    metered_kwh: float
    delivered_kwh: float
    committed_kwh: float
    performance_ratio: float | None
    revenue: float
    penalty: float
    currency: str


class SettlementTotal(ApiModel):
    delivered_kwh: float
    revenue: float
    penalty: float


class SettlementsResponse(ApiModel):
    lines: list[SettlementOut]
    by_enterprise: dict[str, SettlementTotal]


class TotalsOut(ApiModel):
    import_kwh: float
    export_kwh: float
    pv_kwh: float
    pv_self_kwh: float
    generator_kwh: float
    green_kwh: float
    grid_emission_t: float
    fuel_emission_t: float
    emission_t: float
    energy_tce: float
    clean_tce: float
    carbon_intensity_t_per_tce: float | None
    clean_share: float | None


class IndicatorsOut(ApiModel):
    annual_energy_tce: float
    size_basis: Literal["declared", "annualised"]
    band: str
    in_scheme: bool
    carbon_intensity_t_per_tce: float | None
    carbon_intensity_max_t_per_tce: float
    carbon_intensity_ok: bool
    clean_share: float | None
    clean_share_min: float
    clean_share_ok: bool
    met: bool


class TrendOut(ApiModel):
    day: date
    energy_tce: float
    emission_t: float
    carbon_intensity_t_per_tce: float | None
    clean_share: float | None


class CarbonOut(ApiModel):
    computed_at: datetime
    period_start: datetime
    period_end: datetime
    interval_min: float
    park: TotalsOut | None  # None for an enterprise caller
    indicators: IndicatorsOut
    enterprises: dict[str, TotalsOut]
    trend: list[TrendOut]
    interval_emission_kg: list[float] | None


class CarbonResponse(ApiModel):
    carbon: CarbonOut | None


class CycleOut(ApiModel):
    at: datetime
    target_kw: float | None
    measured_kw: float
    error_kw: float | None
    setpoints_sent: int
    setpoints_clamped: int
    duration_s: float
    degraded_assets: list[str]


class PowerSampleOut(ApiModel):
    at: datetime
    measured_kw: float
    target_kw: float | None


class ControlResponse(ApiModel):
    latest: CycleOut | None
    history: list[PowerSampleOut]
    replans: int


class EnrollmentOut(ApiModel):
    valid: bool
    park_id: str
    enterprises: int
    assets: int
    source: str
    applied: bool


class ReplanOut(ApiModel):
    accepted: bool
    ticket: str


class HealthOut(ApiModel):
    status: Literal["ok"]
    version: str


# --- the route table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler needs: the app's parts, the caller and the validated inputs."""

    request: web.Request
    principal: Principal
    state: EngineState
    fleet: Fleet
    actions: Actions
    query: BaseModel | None
    body: BaseModel | None
    text: str | None  # a YAML body

    def enterprise_scope(self, requested: str | None) -> str | None:
        """The enterprise a read is limited to: the caller's own for an enterprise token."""
        own = self.principal.enterprise_id
        if self.principal.role is Role.ENTERPRISE:
            if requested is not None and requested != own:
                raise ApiError(403, "forbidden", f"enterprise token may not read '{requested}'")
            return own
        if requested is not None and requested not in self.fleet.enterprise_ids:
            raise ApiError(404, "not_found", f"no enterprise '{requested}'")
        return requested


Handler = Callable[[Context], Awaitable[BaseModel]]
HandlerT = TypeVar("HandlerT", bound=Handler)


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: Literal["GET", "POST"]
    path: str
    operation: str
    summary: str
    tag: str
    handler: Handler
    response: type[BaseModel]
    roles: frozenset[Role]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_media: Literal["json", "yaml-optional", "none"] = "none"
    status: int = 200


ENDPOINTS: list[Endpoint] = []


def route(
    method: Literal["GET", "POST"],
    path: str,
    response: type[BaseModel],
    roles: frozenset[Role],
    *,
    tag: str,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    body_media: Literal["json", "yaml-optional", "none"] | None = None,
    status: int = 200,
) -> Callable[[HandlerT], HandlerT]:
    """Declare a handler as an endpoint under /api/v1; its docstring's first line is the summary."""

    def register(handler: HandlerT) -> HandlerT:
        summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0].rstrip(".")
        media = body_media if body_media is not None else ("json" if body is not None else "none")
        words = handler.__name__.split("_")
        operation = words[0] + "".join(w.title() for w in words[1:])
        ENDPOINTS.append(
            Endpoint(
                method,
                API_PREFIX + path,
                operation,
                summary,
                tag,
                handler,
                response,
                roles,
                query,
                body,
                media,
                status,
            )
        )
        return handler

    return register


def _counts(agg: Any) -> AvailabilityCounts:
    return AvailabilityCounts(
        available=agg.available,
        stale=agg.stale,
        offline=agg.offline,
        unknown=agg.unknown,
        degraded=agg.degraded,
    )


@route("GET", "/park", ParkOut, READ_ANY, tag="fleet")
async def get_park(ctx: Context) -> ParkOut:
    """The park, its live aggregate power and target."""
    park = ctx.state.park
    agg = ctx.fleet.aggregate()
    now = ctx.fleet.clock.now()
    own = ctx.principal.enterprise_id
    enterprises = [e.id for e in park.enterprises if own is None or e.id == own]
    return ParkOut(
        id=park.id,
        name=park.name,
        timezone=park.timezone,
        version=__version__,
        as_of=now,
        grid_import_limit_kw=park.grid_import_limit_kw,
        grid_export_limit_kw=park.grid_export_limit_kw,
        market_rule_set=park.market.rule_set,
        dr_product=park.market.dr_product,
        enterprises=enterprises,
        assets=agg.assets,
        power_kw=agg.power_kw,
        target_kw=ctx.state.target_kw,
        counts=_counts(agg),
    )


def _enterprise_out(ctx: Context, enterprise_id: str) -> EnterpriseOut:
    enterprise = next((e for e in ctx.state.park.enterprises if e.id == enterprise_id), None)
    if enterprise is None or enterprise_id not in ctx.fleet.enterprise_ids:
        raise ApiError(404, "not_found", f"no enterprise '{enterprise_id}'")
    agg = ctx.fleet.aggregate(enterprise_id)
    return EnterpriseOut(
        id=enterprise.id,
        name=enterprise.name,
        industry=enterprise.industry,
        connection_limit_kw=enterprise.connection_limit_kw,
        assets=agg.assets,
        power_kw=agg.power_kw,
        by_kind_kw={kind.value: kw for kind, kw in sorted(agg.by_kind_kw.items())},
        counts=_counts(agg),
    )


@route("GET", "/enterprises", EnterprisesOut, READ_ANY, tag="fleet")
async def get_enterprises(ctx: Context) -> EnterprisesOut:
    """Enterprises with live aggregates (an enterprise token sees its own)."""
    scope = ctx.enterprise_scope(None)
    ids = [e.id for e in ctx.state.park.enterprises if e.id in ctx.fleet.enterprise_ids]
    return EnterprisesOut(
        enterprises=[_enterprise_out(ctx, e) for e in ids if scope is None or e == scope]
    )


@route("GET", "/enterprises/{enterprise_id}", EnterpriseOut, READ_ANY, tag="fleet")
async def get_enterprise(ctx: Context) -> EnterpriseOut:
    """One enterprise with its live aggregate."""
    requested = ctx.request.match_info["enterprise_id"]
    ctx.enterprise_scope(requested)
    return _enterprise_out(ctx, requested)


def _asset_out(ctx: Context, asset_id: str) -> AssetOut:
    state = ctx.fleet.state(asset_id)
    config = ctx.state.park.asset(asset_id)
    limits = static_limits(config)
    last = state.last
    return AssetOut(
        id=asset_id,
        name=config.name,
        enterprise_id=state.enterprise_id,
        kind=state.kind,
        availability=state.availability,
        min_kw=limits.min_kw,
        max_kw=limits.max_kw,
        power_kw=last.power_kw if last else None,
        soc_fraction=last.soc_fraction if last else None,
        temperature_c=last.temperature_c if last else None,
        last_seen=last.timestamp if last else None,
    )


@route("GET", "/assets", AssetsOut, READ_ANY, tag="fleet", query=AssetQuery)
async def get_assets(ctx: Context) -> AssetsOut:
    """Assets and their live state."""
    query = ctx.query
    assert isinstance(query, AssetQuery)
    scope = ctx.enterprise_scope(query.enterprise)
    known = {a.id for _, a in ctx.state.park.iter_assets()}
    assets = [
        _asset_out(ctx, s.asset_id)
        for s in ctx.fleet.states(scope)
        if s.asset_id in known
        and (query.kind is None or s.kind is query.kind)
        and (query.availability is None or s.availability is query.availability)
    ]
    return AssetsOut(assets=assets)


@route("GET", "/assets/{asset_id}", AssetOut, READ_ANY, tag="fleet")
async def get_asset(ctx: Context) -> AssetOut:
    """One asset and its live state."""
    asset_id = ctx.request.match_info["asset_id"]
    if asset_id not in ctx.fleet:
        raise ApiError(404, "not_found", f"no asset '{asset_id}'")
    owner = ctx.fleet.state(asset_id).enterprise_id
    if ctx.principal.role is Role.ENTERPRISE and owner != ctx.principal.enterprise_id:
        raise ApiError(403, "forbidden", f"asset '{asset_id}' belongs to another enterprise")
    return _asset_out(ctx, asset_id)


@route("GET", "/schedule", ScheduleResponse, READ_ANY, tag="plan", query=EnterpriseQuery)
async def get_schedule(ctx: Context) -> ScheduleResponse:
    """The schedule in force: per asset, and the park total for park-wide roles."""
    query = ctx.query
    assert isinstance(query, EnterpriseQuery)
    scope = ctx.enterprise_scope(query.enterprise)
    schedule = ctx.state.schedule
    if schedule is None:
        return ScheduleResponse(schedule=None)
    owned = _assets_of(ctx, scope)
    assets = {k: list(v) for k, v in schedule.asset_kw.items() if owned is None or k in owned}
    return ScheduleResponse(
        schedule=ScheduleOut(
            computed_at=schedule.computed_at,
            start=schedule.start,
            interval_min=schedule.interval_min,
            status=schedule.status,
            objective=schedule.objective if ctx.principal.role is not Role.ENTERPRISE else None,
            carbon_price_per_t=schedule.carbon_price_per_t,
            park_kw=list(schedule.park_kw) if ctx.principal.role is not Role.ENTERPRISE else None,
            assets=assets,
        )
    )


def _assets_of(ctx: Context, enterprise_id: str | None) -> set[str] | None:
    if enterprise_id is None:
        return None
    return {s.asset_id for s in ctx.fleet.states(enterprise_id)}


@route("GET", "/flexibility", EnvelopeResponse, READ_ALL, tag="plan")
async def get_flexibility(ctx: Context) -> EnvelopeResponse:
    """The park's flexibility envelope."""
    envelope = ctx.state.envelope
    if envelope is None:
        return EnvelopeResponse(envelope=None)
    return EnvelopeResponse(
        envelope=EnvelopeOut(
            computed_at=envelope.computed_at,
            start=envelope.start,
            interval_min=envelope.interval_min,
            expected_kw=list(envelope.expected_kw),
            min_kw=list(envelope.min_kw),
            max_kw=list(envelope.max_kw),
        )
    )


def _minutes(seconds: float) -> float:
    return seconds / 60.0


@route("GET", "/bids", BidsResponse, READ_ALL, tag="market")
async def get_bids(ctx: Context) -> BidsResponse:
    """Submitted bid curves, DR offers and prices."""
    bids = ctx.state.bids
    prices = ctx.state.prices
    return BidsResponse(
        computed_at=bids.computed_at if bids else None,
        curves=[
            BidCurveOut(
                interval_start=c.interval.start,
                interval_min=_minutes(c.interval.length.total_seconds()),
                steps=[
                    BidStepOut(price_up_to_per_mwh=s.price_up_to_per_mwh, power_kw=s.power_kw)
                    for s in c.steps
                ],
            )
            for c in (bids.curves if bids else ())
        ],
        dr_offers=[
            DrOfferOut(
                interval_start=o.interval.start,
                interval_min=_minutes(o.interval.length.total_seconds()),
                reduction_kw=o.reduction_kw,
                price_per_mwh=o.price_per_mwh,
            )
            for o in (bids.dr_offers if bids else ())
        ],
        prices=PricesOut(
            start=prices.start,
            interval_min=prices.interval_min,
            price_per_mwh=list(prices.price_per_mwh),
            kind=prices.kind,
            currency=prices.currency,
        )
        if prices
        else None,
    )


@route("GET", "/awards", AwardsResponse, READ_ALL, tag="market")
async def get_awards(ctx: Context) -> AwardsResponse:
    """Cleared awards."""
    return AwardsResponse(
        awards=[
            AwardOut(
                interval_start=a.interval.start,
                interval_min=_minutes(a.interval.length.total_seconds()),
                market=a.market,
                power_kw=a.power_kw,
                price_per_mwh=a.price_per_mwh,
            )
            for a in ctx.state.award_list()
        ]
    )


def _dr_out(view: DrEventView) -> DrEventOut:
    e = view.event
    return DrEventOut(
        event_id=e.event_id,
        product=e.product,
        start=e.start,
        end=e.end,
        notified_at=e.notified_at,
        reduction_kw=e.reduction_kw,
        price_per_mwh=e.price_per_mwh,
        invitation=e.invitation,
        opted_in=e.opted_in,
        status=view.status,
        changed_at=view.changed_at,
        changed_by=view.changed_by,
        note=view.note,
    )


@route("GET", "/dr-events", DrEventsResponse, READ_ANY, tag="market")
async def get_dr_events(ctx: Context) -> DrEventsResponse:
    """Demand-response events and what was decided about them."""
    return DrEventsResponse(events=[_dr_out(v) for v in ctx.state.dr_event_list()])


@route("GET", "/settlements", SettlementsResponse, READ_ANY, tag="market", query=EnterpriseQuery)
async def get_settlements(ctx: Context) -> SettlementsResponse:
    """Settlement lines and totals per enterprise."""
    query = ctx.query
    assert isinstance(query, EnterpriseQuery)
    scope = ctx.enterprise_scope(query.enterprise)
    lines = [s for s in ctx.state.settlements if scope is None or s.enterprise_id == scope]
    totals: dict[str, SettlementTotal] = {}
    for s in lines:
        old = totals.get(s.enterprise_id, SettlementTotal(delivered_kwh=0, revenue=0, penalty=0))
        totals[s.enterprise_id] = SettlementTotal(
            delivered_kwh=old.delivered_kwh + s.delivered_kwh,
            revenue=old.revenue + s.revenue,
            penalty=old.penalty + s.penalty,
        )
    return SettlementsResponse(
        lines=[
            SettlementOut(
                enterprise_id=s.enterprise_id,
                reference=s.reference,
                start=s.start,
                end=s.end,
                baseline_kwh=s.baseline_kwh,
                metered_kwh=s.metered_kwh,
                delivered_kwh=s.delivered_kwh,
                committed_kwh=s.committed_kwh,
                performance_ratio=s.performance_ratio,
                revenue=s.revenue,
                penalty=s.penalty,
                currency=s.currency,
            )
            for s in lines
        ],
        by_enterprise=totals,
    )


def totals_out(t: EnergyCarbonTotals) -> TotalsOut:
    return TotalsOut(
        import_kwh=t.import_kwh,
        export_kwh=t.export_kwh,
        pv_kwh=t.pv_kwh,
        pv_self_kwh=t.pv_self_kwh,
        generator_kwh=t.generator_kwh,
        green_kwh=t.green_kwh,
        grid_emission_t=t.grid_emission_t,
        fuel_emission_t=t.fuel_emission_t,
        emission_t=t.emission_t,
        energy_tce=t.energy_tce,
        clean_tce=t.clean_tce,
        carbon_intensity_t_per_tce=t.carbon_intensity_t_per_tce,
        clean_share=t.clean_share,
    )


@route("GET", "/carbon", CarbonResponse, READ_ANY, tag="carbon", query=EnterpriseQuery)
async def get_carbon(ctx: Context) -> CarbonResponse:
    """Carbon and energy accounting with the zero-carbon indicators."""
    query = ctx.query
    assert isinstance(query, EnterpriseQuery)
    scope = ctx.enterprise_scope(query.enterprise)
    view = ctx.state.carbon
    if view is None:
        return CarbonResponse(carbon=None)
    account = view.account
    ind = account.indicators
    park_level = ctx.principal.role is not Role.ENTERPRISE
    return CarbonResponse(
        carbon=CarbonOut(
            computed_at=view.computed_at,
            period_start=account.horizon.start,
            period_end=account.horizon.end,
            interval_min=account.horizon.hours * 60,
            park=totals_out(account.park.totals()) if park_level else None,
            indicators=IndicatorsOut(
                annual_energy_tce=ind.annual_energy_tce,
                size_basis=ind.size_basis,
                band=ind.band.label,
                in_scheme=ind.band.in_scheme,
                carbon_intensity_t_per_tce=ind.carbon_intensity_t_per_tce,
                carbon_intensity_max_t_per_tce=ind.carbon_intensity_max_t_per_tce,
                carbon_intensity_ok=ind.carbon_intensity_ok,
                clean_share=ind.clean_share,
                clean_share_min=ind.clean_share_min,
                clean_share_ok=ind.clean_share_ok,
                met=ind.met,
            ),
            enterprises={
                e: totals_out(series.totals())
                for e, series in account.enterprises.items()
                if scope is None or e == scope
            },
            trend=[
                TrendOut(
                    day=p.day,
                    energy_tce=p.energy_tce,
                    emission_t=p.emission_t,
                    carbon_intensity_t_per_tce=p.carbon_intensity_t_per_tce,
                    clean_share=p.clean_share,
                )
                for p in view.trend
            ],
            interval_emission_kg=[float(v) for v in account.park.emission_kg]
            if park_level
            else None,
        )
    )


@route("GET", "/control", ControlResponse, READ_ALL, tag="control", query=HistoryQuery)
async def get_control(ctx: Context) -> ControlResponse:
    """The latest control cycle and recent park power against its target."""
    query = ctx.query
    assert isinstance(query, HistoryQuery)
    cycle = ctx.state.control
    history = list(ctx.state.power_history)[-query.limit :]
    return ControlResponse(
        latest=CycleOut(
            at=cycle.at,
            target_kw=cycle.target_kw,
            measured_kw=cycle.measured_kw,
            error_kw=cycle.error_kw,
            setpoints_sent=cycle.setpoints_sent,
            setpoints_clamped=cycle.setpoints_clamped,
            duration_s=cycle.duration_s,
            degraded_assets=list(cycle.degraded_assets),
        )
        if cycle
        else None,
        history=[
            PowerSampleOut(at=s.at, measured_kw=s.measured_kw, target_kw=s.target_kw)
            for s in history
        ],
        replans=ctx.state.replans,
    )


@route(
    "POST",
    "/enrollment/validate",
    EnrollmentOut,
    WRITE,
    tag="enrollment",
    body_media="yaml-optional",
)
async def post_validate(ctx: Context) -> EnrollmentOut:
    """Validate an enrollment: the YAML body, or the engine's config file if empty."""
    check = await ctx.actions.validate_enrollment(ctx.text)
    return EnrollmentOut(
        valid=True,
        park_id=check.park_id,
        enterprises=check.enterprises,
        assets=check.assets,
        source=check.path,
        applied=False,
    )


@route("POST", "/enrollment/reload", EnrollmentOut, WRITE, tag="enrollment")
async def post_reload(ctx: Context) -> EnrollmentOut:
    """Reload the engine's config file and apply it."""
    check = await ctx.actions.reload_enrollment()
    log.info("enrollment reloaded by %s from %s", ctx.principal.name, check.path)
    return EnrollmentOut(
        valid=True,
        park_id=check.park_id,
        enterprises=check.enterprises,
        assets=check.assets,
        source=check.path,
        applied=True,
    )


@route("POST", "/dr-events/{event_id}/acknowledge", DrEventOut, WRITE, tag="market", body=AckIn)
async def post_acknowledge(ctx: Context) -> DrEventOut:
    """Acknowledge a DR event: the park will respond."""
    body = ctx.body
    assert isinstance(body, AckIn)
    event_id = ctx.request.match_info["event_id"]
    view = await ctx.actions.acknowledge_dr_event(event_id, ctx.principal.name, body.note)
    log.info("DR event %s acknowledged by %s", event_id, ctx.principal.name)
    return _dr_out(view)


@route("POST", "/dr-events/{event_id}/opt-out", DrEventOut, WRITE, tag="market", body=OptOutIn)
async def post_opt_out(ctx: Context) -> DrEventOut:
    """Opt out of a DR event before it starts."""
    body = ctx.body
    assert isinstance(body, OptOutIn)
    event_id = ctx.request.match_info["event_id"]
    view = await ctx.actions.opt_out_dr_event(event_id, ctx.principal.name, body.reason)
    log.info("DR event %s opted out by %s", event_id, ctx.principal.name)
    return _dr_out(view)


@route("POST", "/replan", ReplanOut, WRITE, tag="plan", body=ReplanIn, status=202)
async def post_replan(ctx: Context) -> ReplanOut:
    """Ask for a new schedule now."""
    body = ctx.body
    assert isinstance(body, ReplanIn)
    ticket = await ctx.actions.replan(body.reason, body.carbon_price_per_t)
    log.info("replan %s requested by %s: %s", ticket, ctx.principal.name, body.reason)
    return ReplanOut(accepted=True, ticket=ticket)


# --- request handling -------------------------------------------------------------------------

STATE_KEY = web.AppKey("state", EngineState)
FLEET_KEY = web.AppKey("fleet", Fleet)
METRICS_KEY = web.AppKey("metrics", Metrics)
TOKENS_KEY = web.AppKey("tokens", TokenStore)
ACTIONS_KEY = web.AppKey("actions", Actions)
OPENAPI_KEY = web.AppKey("openapi", bytes)


def _validation_message(err: ValidationError, where: str) -> str:
    first = err.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field" if where == "body" else "unknown query parameter"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where} {loc}: {message}{more}" if loc else f"{where}: {message}{more}"


async def _read_body(
    request: web.Request, endpoint: Endpoint
) -> tuple[BaseModel | None, str | None]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
    raw = await request.read()  # raises 413 itself beyond client_max_size
    media = request.content_type
    if endpoint.body_media == "none":
        if raw.strip():
            raise ApiError(400, "bad_request", "this endpoint takes no request body")
        return None, None
    if endpoint.body_media == "yaml-optional":
        if not raw.strip():
            return None, None
        if media not in ("application/yaml", "application/x-yaml", "text/yaml", "text/plain"):
            raise ApiError(415, "unsupported_media_type", f"expected application/yaml, got {media}")
        try:
            return None, raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "bad_request", "request body is not UTF-8") from None
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", f"expected application/json, got {media}")
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, "bad_request", f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "request body must be a JSON object")
    assert endpoint.body is not None
    try:
        return endpoint.body.model_validate(data), None
    except ValidationError as err:
        raise ApiError(422, "invalid", _validation_message(err, "body")) from None


def _make_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        principal = app[TOKENS_KEY].authenticate(request.headers.get("Authorization"))
        if principal.role not in endpoint.roles:
            raise ApiError(
                403, "forbidden", f"role '{principal.role.value}' may not call {endpoint.operation}"
            )
        query: BaseModel | None = None
        if endpoint.query is not None:
            try:
                query = endpoint.query.model_validate(dict(request.query))
            except ValidationError as err:
                raise ApiError(400, "bad_request", _validation_message(err, "query")) from None
        elif request.query:
            name = next(iter(request.query))
            raise ApiError(400, "bad_request", f"query {name}: unknown query parameter")
        body, text = await _read_body(request, endpoint)
        ctx = Context(
            request, principal, app[STATE_KEY], app[FLEET_KEY], app[ACTIONS_KEY], query, body, text
        )
        result = await endpoint.handler(ctx)
        return web.json_response(result.model_dump(mode="json"), status=endpoint.status)

    return handle


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    metrics = request.app[METRICS_KEY]
    try:
        response = await handler(request)
    except ApiError as err:
        response = _refusal(metrics, err)
    except StateError as err:
        response = _refusal(
            metrics, ApiError(err.status, _REASONS.get(err.status, "invalid"), str(err))
        )
    except ConfigError as err:
        problems = [str(p) for p in err.problems]
        first = problems[0] if problems else "invalid configuration"
        response = _refusal(
            metrics,
            ApiError(422, "invalid_config", _one_line(f"invalid enrollment: {first}"), problems),
        )
    except web.HTTPException as err:
        if err.status < 400:
            raise
        reason = _REASONS.get(err.status, "http_error")
        message = {
            404: f"no route {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            413: f"request body over {MAX_BODY_BYTES} bytes",
        }.get(err.status, err.reason)
        response = _refusal(metrics, ApiError(err.status, reason, message))
        if isinstance(err, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(err.allowed_methods))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("API %s %s failed", request.method, request.path)
        metrics.api_rejected.labels("internal").inc()
        response = web.json_response({"error": "internal error; see the engine log"}, status=500)
    metrics.api_requests.labels(request.method, _route_name(request), str(response.status)).inc()
    return response


def _refusal(metrics: Metrics, err: ApiError) -> web.Response:
    metrics.api_rejected.labels(err.reason).inc()
    body: dict[str, Any] = {"error": _one_line(err.message)}
    if err.problems is not None:
        body["problems"] = err.problems
    response = web.json_response(body, status=err.status)
    if err.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="vpp"'
    return response


# --- public routes: dashboard, OpenAPI, metrics, health ----------------------------------------


def _dashboard_file(name: str) -> bytes:
    return resources.files("vpp.dashboard").joinpath(name).read_bytes()


async def _index(request: web.Request) -> web.Response:
    return web.Response(
        body=_dashboard_file("index.html"), content_type="text/html", charset="utf-8"
    )


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    media = DASHBOARD_FILES.get(name)
    if media is None:
        raise ApiError(404, "not_found", f"no dashboard file '{name}'")
    return web.Response(body=_dashboard_file(name), content_type=media, charset="utf-8")


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY], content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    output = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=output, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    return web.json_response(HealthOut(status="ok", version=__version__).model_dump(mode="json"))


def openapi_document(endpoints: list[Endpoint] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, from the route table and its pydantic models."""
    endpoints = ENDPOINTS if endpoints is None else endpoints
    models: list[type[BaseModel]] = [ErrorOut, HealthOut]
    for e in endpoints:
        models.extend(m for m in (e.response, e.query, e.body) if m is not None)
    unique = list(dict.fromkeys(models))
    keys, top = models_json_schema(
        [
            (m, "serialization" if m not in (AckIn, OptOutIn, ReplanIn) else "validation")
            for m in unique
        ],
        ref_template="#/components/schemas/{model}",
    )
    refs = {model: keys[(model, mode)] for (model, mode) in keys}
    schemas = top.get("$defs", {})
    error = {"description": "refused", "content": {"application/json": {"schema": refs[ErrorOut]}}}
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", e.path)
        ]
        if e.query is not None:
            properties = schemas[e.query.__name__]["properties"]
            required = set(schemas[e.query.__name__].get("required", []))
            parameters += [
                {"name": name, "in": "query", "required": name in required, "schema": schema}
                for name, schema in properties.items()
            ]
        responses: dict[str, Any] = {
            str(e.status): {
                "description": "ok",
                "content": {"application/json": {"schema": refs[e.response]}},
            },
            "400": error,
            "401": error,
            "403": error,
        }
        if e.method == "POST":
            responses.update({"404": error, "409": error, "413": error, "415": error, "422": error})
        elif "{" in e.path or e.query is not None:
            responses["404"] = error
        operation: dict[str, Any] = {
            "operationId": e.operation,
            "summary": e.summary,
            "tags": [e.tag],
            "parameters": parameters,
            "responses": responses,
            "x-roles": sorted(r.value for r in e.roles),
        }
        if e.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[e.body]}},
            }
        elif e.body_media == "yaml-optional":
            operation["requestBody"] = {
                "required": False,
                "content": {"application/yaml": {"schema": {"type": "string"}}},
            }
        paths.setdefault(e.path, {})[e.method.lower()] = operation
    paths["/healthz"] = {
        "get": {
            "operationId": "health",
            "summary": "Liveness",
            "tags": ["service"],
            "security": [],
            "responses": {
                "200": {
                    "description": "ok",
                    "content": {"application/json": {"schema": refs[HealthOut]}},
                }
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "tags": ["service"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["service"],
            "security": [],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "VPP engine API",
            "version": __version__,
            "description": (
                "Park state, plans, market positions, DR events, settlements and carbon "
                "indicators. Writes need an operator token; an enterprise token reads its "
                "own data only."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }


def create_app(
    state: EngineState,
    fleet: Fleet,
    metrics: Metrics,
    tokens: TokenStore,
    actions: Actions,
) -> web.Application:
    """The aiohttp application; the engine runs it with an AppRunner on park.engine.listen."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    app[FLEET_KEY] = fleet
    app[METRICS_KEY] = metrics
    app[TOKENS_KEY] = tokens
    app[ACTIONS_KEY] = actions
    app[OPENAPI_KEY] = json.dumps(openapi_document()).encode()
    for principal in tokens.principals.values():
        if (
            principal.enterprise_id is not None
            and principal.enterprise_id not in fleet.enterprise_ids
        ):
            log.warning(
                "API token %s names unknown enterprise '%s'",
                principal.name,
                principal.enterprise_id,
            )
    router = app.router
    router.add_get("/", _index)
    router.add_get("/static/{name}", _static)
    router.add_get("/openapi.json", _openapi)
    router.add_get("/metrics", _metrics)
    router.add_get("/healthz", _health)
    for endpoint in ENDPOINTS:
        router.add_route(
            endpoint.method, endpoint.path, _make_handler(endpoint), name=endpoint.operation
        )
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) as the config and `--listen` write it."""
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port_text)


@contextlib.asynccontextmanager
async def serve(app: web.Application, listen: str) -> Any:
    """Run `app` on `listen` until the block exits; yields the bound (host, port)."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        address = runner.addresses[0] if runner.addresses else (host, port)
        yield (str(address[0]), int(address[1]))
    finally:
        await runner.cleanup()
