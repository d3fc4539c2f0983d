"""Load and check the enrollment config and the market rule sets it refers to.

Every problem comes back as one `FILE:LINE: field.path: what is wrong` line; all problems of a
file are reported together, so a user fixes them in one pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from market.rules import AnyRuleSet, DemandResponseRules, RuleSet, SpotMarketRules
from vpp.config import yamlsource
from vpp.config.messages import validation_message
from vpp.config.schema import Park
from vpp.config.yamlsource import dotted
from vpp.domain import AssetKind
from vpp.errors import ConfigError, Problem

ModelT = TypeVar("ModelT", bound=BaseModel)

# Discriminator tags pydantic puts into error locations; they are not keys of the file.
_TAGS = {kind.value for kind in AssetKind} | {"sim", "mqtt", "http", "modbus", "ocpp", "gateway"}
_TAGS |= {"spot", "demand_response"}


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated park with the market rule sets it takes part in."""

    park: Park
    path: Path
    spot: SpotMarketRules
    dr: DemandResponseRules | None
    markets_dir: Path


def load_park(path: Path | str, markets_dir: Path | str | None = None) -> LoadedConfig:
    """Read, validate and cross-check a park config; raise ConfigError listing every problem."""
    path = Path(path)
    source = yamlsource.load(path)
    park = _validate(Park, source)
    problems = _check_references(park, source)
    folder = Path(markets_dir) if markets_dir is not None else path.parent / "markets"
    spot: AnyRuleSet | None = None
    dr: AnyRuleSet | None = None
    market_path: tuple[str | int, ...] = ("market",)
    spot, spot_problems = _rule_set_for(
        park.market.rule_set, folder, source, (*market_path, "rule_set")
    )
    problems += spot_problems
    if spot is not None and not isinstance(spot, SpotMarketRules):
        problems.append(
            _problem(
                source, (*market_path, "rule_set"), f"rule set '{spot.id}' is not a spot market"
            )
        )
    if park.market.dr_product is not None:
        dr, dr_problems = _rule_set_for(
            park.market.dr_product, folder, source, (*market_path, "dr_product")
        )
        problems += dr_problems
        if dr is not None and not isinstance(dr, DemandResponseRules):
            problems.append(
                _problem(
                    source,
                    (*market_path, "dr_product"),
                    f"rule set '{dr.id}' is not a demand-response product",
                )
            )
    if problems:
        raise ConfigError(problems)
    assert isinstance(spot, SpotMarketRules)
    assert dr is None or isinstance(dr, DemandResponseRules)
    return LoadedConfig(park=park, path=path, spot=spot, dr=dr, markets_dir=folder)


def load_rule_set(path: Path | str) -> AnyRuleSet:
    """Read and validate one market rule set file."""
    source = yamlsource.load(Path(path))
    adapter: TypeAdapter[AnyRuleSet] = TypeAdapter(RuleSet)
    try:
        return adapter.validate_python(source.data)
    except ValidationError as err:
        raise ConfigError(_problems_from(err, source)) from None


def _rule_set_for(
    name: str, folder: Path, source: yamlsource.Source, where: tuple[str | int, ...]
) -> tuple[AnyRuleSet | None, list[Problem]]:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        hint = f" (known: {', '.join(known)})" if known else f" (no rule sets in {folder})"
        return None, [_problem(source, where, f"unknown market rule set '{name}'{hint}")]
    try:
        rules = load_rule_set(path)
    except ConfigError as err:
        return None, err.problems
    if rules.id != name:
        return None, [
            Problem(
                str(path), 1, "id", f"rule set id '{rules.id}' differs from its file name '{name}'"
            )
        ]
    return rules, []


def _validate(model: type[ModelT], source: yamlsource.Source) -> ModelT:
    if not isinstance(source.data, dict):
        kind = type(source.data).__name__
        raise ConfigError(
            [Problem(source.root_file, 1, "", f"expected a mapping at top level, found {kind}")]
        )
    # Top-level keys starting with "x-" hold YAML anchors (shared terms, profiles) only.
    data = {k: v for k, v in source.data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_problems_from(err, source)) from None


def _problems_from(err: ValidationError, source: yamlsource.Source) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, int | None, str]] = set()
    for item in err.errors(include_url=False):
        path = _clean_loc(item["loc"], source)
        if item["type"] == "union_tag_invalid":
            path = (*path, str(item.get("ctx", {}).get("discriminator", "kind")).strip("'"))
        elif item["type"] == "unknown_adapter" and (*path, "adapter") in source.lines:
            path = (*path, "adapter")
        file, line = source.locate(path)
        message = validation_message(item)
        key = (file, line, message + dotted(path))
        if key in seen:
            continue
        seen.add(key)
        problems.append(Problem(file, line, dotted(path), message))
    return problems


def _clean_loc(loc: tuple[int | str, ...], source: yamlsource.Source) -> tuple[str | int, ...]:
    path: tuple[str | int, ...] = ()
    for part in loc:
        candidate = (*path, part)
        if candidate in source.lines:
            path = candidate
        elif isinstance(part, str) and (part in _TAGS or "[" in part):
            continue
        else:
            path = candidate
    return path


def _check_references(park: Park, source: yamlsource.Source) -> list[Problem]:
    problems: list[Problem] = []
    enterprise_ids = Counter(e.id for e in park.enterprises)
    first_enterprise: dict[str, int] = {}
    for index, enterprise in enumerate(park.enterprises):
        where = ("enterprises", index, "id")
        first = first_enterprise.setdefault(enterprise.id, index)
        if first != index:
            problems.append(
                _problem(
                    source,
                    where,
                    f"duplicate enterprise id '{enterprise.id}' (also enterprises[{first}])",
                )
            )
        gateway_ids = Counter(g.id for g in enterprise.gateways)
        for g_index, gateway in enumerate(enterprise.gateways):
            if gateway_ids[gateway.id] > 1:
                problems.append(
                    _problem(
                        source,
                        ("enterprises", index, "gateways", g_index, "id"),
                        f"duplicate gateway id '{gateway.id}'",
                    )
                )

    gateways = {e.id: {g.id for g in e.gateways} for e in park.enterprises}
    first_asset: dict[str, tuple[str | int, ...]] = {}
    for path, asset in _asset_paths(park):
        first_path = first_asset.setdefault(asset.id, path)
        if first_path != path:
            problems.append(
                _problem(
                    source,
                    (*path, "id"),
                    f"duplicate asset id '{asset.id}' (also {dotted(first_path)})",
                )
            )
        owner = path[1] if path[0] == "enterprises" else None
        owner_id = park.enterprises[owner].id if isinstance(owner, int) else asset.enterprise
        if path[0] == "assets":
            if asset.enterprise is None:
                problems.append(
                    _problem(
                        source, path, "an asset listed at park level must name its 'enterprise'"
                    )
                )
                continue
            if asset.enterprise not in enterprise_ids:
                problems.append(
                    _problem(
                        source, (*path, "enterprise"), f"unknown enterprise '{asset.enterprise}'"
                    )
                )
                continue
        elif asset.enterprise is not None and asset.enterprise != owner_id:
            problems.append(
                _problem(
                    source,
                    (*path, "enterprise"),
                    f"asset is listed under enterprise '{owner_id}', not '{asset.enterprise}'",
                )
            )
        gateway_id = getattr(asset.connection, "gateway", None)
        if (
            gateway_id is not None
            and owner_id is not None
            and gateway_id not in gateways.get(owner_id, set())
        ):
            problems.append(
                _problem(
                    source,
                    (*path, "connection", "gateway"),
                    f"unknown gateway '{gateway_id}' of enterprise '{owner_id}'",
                )
            )
    total_limit = sum(e.connection_limit_kw for e in park.enterprises)
    if park.grid_import_limit_kw > 10 * total_limit:
        problems.append(
            _problem(
                source,
                ("grid_import_limit_kw",),
                f"{park.grid_import_limit_kw} kW is more than ten times the enterprises' "
                f"connection limits together ({total_limit} kW)",
            )
        )
    return problems


def _asset_paths(park: Park) -> list[tuple[tuple[str | int, ...], Any]]:
    paths: list[tuple[tuple[str | int, ...], Any]] = []
    for e_index, enterprise in enumerate(park.enterprises):
        paths.extend(
            (("enterprises", e_index, "assets", a_index), a)
            for a_index, a in enumerate(enterprise.assets)
        )
    paths.extend((("assets", a_index), a) for a_index, a in enumerate(park.assets))
    return paths


def _problem(source: yamlsource.Source, path: tuple[str | int, ...], message: str) -> Problem:
    file, line = source.locate(path)
    return Problem(file, line, dotted(path), message)
