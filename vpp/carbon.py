"""Carbon and energy accounting of the park and its enterprises, and the zero-carbon indicators.

Inputs are metered mean power per asset and interval (positive = drawn from the grid), the
park's `CarbonSettings` (grid emission factor, constant or a CSV series; green certificates)
and the indicator thresholds of `config/indicators.yaml`. Everything here is pure computation;
the conventions it follows are written out in docs/carbon.md.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dispatch.series import FloatArray, Horizon
from vpp.config import yamlsource
from vpp.config.schema import CarbonSettings, Generator, Park, PvAsset
from vpp.config.yamlsource import dotted
from vpp.errors import ConfigError, Problem, VPPError

HOURS_PER_YEAR = 8760.0
FuelName = Literal["diesel", "natural_gas", "biogas", "hydrogen"]


class CarbonError(VPPError):
    """Carbon accounting cannot be done on these inputs; the message names the input at fault."""


# --- indicator configuration ------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class FuelFactors(_Model):
    """Standard-coal factor of one fuel and whether its energy counts as clean."""

    kgce_per_kwh_fuel: Annotated[float, Field(gt=0, le=1)] = Field(
        description="kg of standard coal equivalent per kWh of fuel energy (lower heating value)"
    )
    clean: bool = Field(description="fuel energy counts toward the clean-energy share")


class SizeBand(_Model):
    """A range of annual comprehensive energy consumption and its carbon-intensity ceiling."""

    label: str = Field(min_length=1, max_length=80)
    min_tce_per_year: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    max_tce_per_year: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    max_t_co2_per_tce: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]
    in_scheme: bool = Field(
        default=True, description="false for a size the national scheme does not cover"
    )

    def contains(self, tce_per_year: float) -> bool:
        upper = math.inf if self.max_tce_per_year is None else self.max_tce_per_year
        return self.min_tce_per_year <= tce_per_year < upper


class IndicatorConfig(_Model):
    """Zero-carbon indicator thresholds and energy conversion factors (config/indicators.yaml)."""

    electricity_kgce_per_kwh: Annotated[float, Field(gt=0, le=1)] = Field(
        description="standard-coal factor of electricity (0.1229 = equivalent calorific value)"
    )
    fuels: dict[FuelName, FuelFactors]
    grid_clean_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description="share of grid electricity (beyond green certificates) counted as clean",
    )
    clean_energy_share_min: Annotated[float, Field(ge=0, le=1)]
    size_bands: list[SizeBand] = Field(min_length=1)
    declared_annual_energy_tce: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None,
        description="park size for choosing the band; default: the accounted period, annualised",
    )

    @model_validator(mode="after")
    def _bands_tile(self) -> IndicatorConfig:
        bands = self.size_bands
        if bands[0].min_tce_per_year != 0:
            raise ValueError("size_bands must start at min_tce_per_year 0")
        for lower, upper in itertools.pairwise(bands):
            if lower.max_tce_per_year is None or lower.max_tce_per_year != upper.min_tce_per_year:
                raise ValueError(
                    f"size band '{lower.label}' must end where '{upper.label}' starts "
                    "(bands are listed in order and leave no gap)"
                )
        if bands[-1].max_tce_per_year is not None:
            raise ValueError(f"the last size band '{bands[-1].label}' must have no maximum")
        return self

    def band_for(self, tce_per_year: float) -> SizeBand:
        for band in self.size_bands:
            if band.contains(tce_per_year):
                return band
        return self.size_bands[-1]  # only reached for NaN or negative sizes

    def fuel(self, name: str) -> FuelFactors:
        try:
            return self.fuels[name]  # type: ignore[index]
        except KeyError:
            raise CarbonError(f"indicators: no standard-coal factor for fuel '{name}'") from None


def load_indicators(path: Path | str) -> IndicatorConfig:
    """Read and validate an indicator file; ConfigError lists every problem with its line."""
    source = yamlsource.load(Path(path))
    if not isinstance(source.data, dict):
        raise ConfigError([Problem(source.root_file, 1, "", "expected a mapping at top level")])
    try:
        return IndicatorConfig.model_validate(source.data)
    except ValidationError as err:
        problems = []
        for item in err.errors(include_url=False):
            where = tuple(part for part in item["loc"] if isinstance(part, str | int))
            file, line = source.locate(where)
            message = str(item["msg"]).removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(Problem(file, line, dotted(where), message))
        raise ConfigError(problems) from None


def indicators_path_for(config_path: Path | str) -> Path:
    """Where a park's indicator file is looked for: `indicators.yaml` beside the park file."""
    return Path(config_path).parent / "indicators.yaml"


# --- grid emission factor ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GridEmissionFactor:
    """Grid emission factor in kg CO2 per kWh: a constant, a dated series or a daily profile.

    A dated series is a step function: each value holds from its timestamp to the next one.
    A daily profile (times of day without dates, park-local) repeats every day.
    """

    constant_kg_per_kwh: float
    series_at: tuple[datetime, ...] = ()
    series_kg_per_kwh: tuple[float, ...] = ()
    daily_minutes: tuple[int, ...] = ()
    daily_kg_per_kwh: tuple[float, ...] = ()
    timezone: str = "Asia/Shanghai"
    source: str = "constant"

    def at(self, starts: Sequence[datetime]) -> FloatArray:
        """Factor in force at each interval start."""
        if self.series_at:
            stamps = np.array([s.timestamp() for s in self.series_at])
            wanted = np.array([s.timestamp() for s in starts])
            index = np.searchsorted(stamps, wanted, side="right") - 1
            if len(starts) and index.min() < 0:
                first = starts[int(np.argmin(index))]
                raise CarbonError(
                    f"{self.source}: no grid emission factor for {first.isoformat()} "
                    f"(series starts {self.series_at[0].isoformat()})"
                )
            return np.asarray(self.series_kg_per_kwh, dtype=float)[index]
        if self.daily_minutes:
            tz = ZoneInfo(self.timezone)
            minutes = np.array(self.daily_minutes)
            values = np.asarray(self.daily_kg_per_kwh, dtype=float)
            local = [s.astimezone(tz) for s in starts]
            wanted = np.array([t.hour * 60 + t.minute for t in local])
            # Before the first listed time of day, the last value of the day before holds.
            index = (np.searchsorted(minutes, wanted, side="right") - 1) % len(minutes)
            return values[index]
        return np.full(len(starts), self.constant_kg_per_kwh, dtype=float)


def grid_factor(
    settings: CarbonSettings, base_dir: Path | str, timezone: str
) -> GridEmissionFactor:
    """The park's grid factor: the CSV series when configured, else the constant."""
    if settings.grid_emission_series is None:
        return GridEmissionFactor(settings.grid_emission_factor_kg_per_kwh, timezone=timezone)
    return load_emission_series(
        Path(base_dir) / settings.grid_emission_series,
        timezone,
        settings.grid_emission_factor_kg_per_kwh,
    )


def load_emission_series(
    path: Path, timezone: str, constant_kg_per_kwh: float = 0.0
) -> GridEmissionFactor:
    """Read a `timestamp,kg_per_kwh` CSV: ISO timestamps with offset, or `HH:MM` times of day."""
    name = str(path)
    text = yamlsource.read_text(path)
    dated: list[tuple[datetime, float]] = []
    daily: list[tuple[int, float]] = []
    rows = csv.reader(text.splitlines())
    for line_no, row in enumerate(rows, start=1):
        if not row or row[0].strip().startswith("#"):
            continue
        if len(row) != 2:
            raise ConfigError([Problem(name, line_no, "", "expected 'timestamp,kg_per_kwh'")])
        stamp, raw_value = row[0].strip(), row[1].strip()
        if stamp.lower() == "timestamp":
            continue
        try:
            value = float(raw_value)
        except ValueError:
            raise ConfigError(
                [Problem(name, line_no, "", f"not a number: {raw_value!r}")]
            ) from None
        if not (math.isfinite(value) and 0 <= value <= 2):
            raise ConfigError([Problem(name, line_no, "", f"factor {value} is outside [0, 2]")])
        try:
            if len(stamp) <= 5 and ":" in stamp:
                moment = time.fromisoformat(stamp)
                daily.append((moment.hour * 60 + moment.minute, value))
                continue
            when = datetime.fromisoformat(stamp)
        except ValueError:
            raise ConfigError(
                [Problem(name, line_no, "", f"not an ISO timestamp or HH:MM: {stamp!r}")]
            ) from None
        if when.tzinfo is None:
            raise ConfigError([Problem(name, line_no, "", f"timestamp {stamp} has no UTC offset")])
        dated.append((when, value))
    if dated and daily:
        raise ConfigError([Problem(name, None, "", "mixes dated timestamps and times of day")])
    if not dated and not daily:
        raise ConfigError([Problem(name, None, "", "no emission factors in the file")])
    if dated:
        dated.sort(key=lambda pair: pair[0])
        return GridEmissionFactor(
            constant_kg_per_kwh,
            series_at=tuple(d for d, _ in dated),
            series_kg_per_kwh=tuple(v for _, v in dated),
            timezone=timezone,
            source=name,
        )
    daily.sort()
    minutes = [m for m, _ in daily]
    if len(set(minutes)) != len(minutes):
        raise ConfigError([Problem(name, None, "", "a time of day is listed twice")])
    return GridEmissionFactor(
        constant_kg_per_kwh,
        daily_minutes=tuple(minutes),
        daily_kg_per_kwh=tuple(v for _, v in daily),
        timezone=timezone,
        source=name,
    )


# --- accounting -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeteredPeriod:
    """Metered mean power per interval (kW, positive = drawn) over `horizon`.

    `asset_power_kw` holds each enrolled asset's series; `other_load_kw` an enterprise's
    consumption that is not enrolled (its site meter minus its assets), when it is metered.
    An asset or enterprise missing from the maps counts as zero.
    """

    horizon: Horizon
    asset_power_kw: Mapping[str, FloatArray]
    other_load_kw: Mapping[str, FloatArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, series in (*self.asset_power_kw.items(), *self.other_load_kw.items()):
            if series.shape != (self.horizon.intervals,):
                raise CarbonError(
                    f"metered series '{key}' has shape {series.shape}, "
                    f"expected ({self.horizon.intervals},)"
                )
            if not np.all(np.isfinite(series)):
                raise CarbonError(f"metered series '{key}' has NaN or infinite values")


@dataclass(frozen=True, slots=True)
class EnergyCarbonSeries:
    """Per-interval energy and carbon figures of one enterprise or of the whole park."""

    import_kwh: FloatArray
    export_kwh: FloatArray
    pv_kwh: FloatArray  # on-site renewable generation
    pv_self_kwh: FloatArray  # ... of which consumed on site (exports are taken from PV first)
    generator_kwh: FloatArray  # electricity from on-site fuel (generators, CHP)
    fuel_kgce: FloatArray  # standard coal equivalent of the fuel burnt
    clean_fuel_kgce: FloatArray  # ... of which from fuels counted as clean
    green_kwh: FloatArray  # grid electricity covered by green electricity / certificates
    grid_emission_kg: FloatArray
    fuel_emission_kg: FloatArray
    energy_kgce: FloatArray  # comprehensive energy consumption
    clean_kgce: FloatArray  # clean part of it

    @property
    def emission_kg(self) -> FloatArray:
        return self.grid_emission_kg + self.fuel_emission_kg

    def totals(self) -> EnergyCarbonTotals:
        return EnergyCarbonTotals(
            import_kwh=float(self.import_kwh.sum()),
            export_kwh=float(self.export_kwh.sum()),
            pv_kwh=float(self.pv_kwh.sum()),
            pv_self_kwh=float(self.pv_self_kwh.sum()),
            generator_kwh=float(self.generator_kwh.sum()),
            green_kwh=float(self.green_kwh.sum()),
            grid_emission_t=float(self.grid_emission_kg.sum()) / 1000,
            fuel_emission_t=float(self.fuel_emission_kg.sum()) / 1000,
            energy_tce=float(self.energy_kgce.sum()) / 1000,
            clean_tce=float(self.clean_kgce.sum()) / 1000,
        )


@dataclass(frozen=True, slots=True)
class EnergyCarbonTotals:
    """Sums over a period: energies in kWh, emissions in tCO2, energy consumption in tce."""

    import_kwh: float
    export_kwh: float
    pv_kwh: float
    pv_self_kwh: float
    generator_kwh: float
    green_kwh: float
    grid_emission_t: float
    fuel_emission_t: float
    energy_tce: float
    clean_tce: float

    @property
    def emission_t(self) -> float:
        return self.grid_emission_t + self.fuel_emission_t

    @property
    def carbon_intensity_t_per_tce(self) -> float | None:
        """Carbon emission per unit of energy consumption; None when nothing was consumed."""
        return self.emission_t / self.energy_tce if self.energy_tce > 1e-12 else None

    @property
    def clean_share(self) -> float | None:
        return min(self.clean_tce / self.energy_tce, 1.0) if self.energy_tce > 1e-12 else None


@dataclass(frozen=True, slots=True)
class IndicatorResult:
    """The park's zero-carbon indicators over the accounted period, against their thresholds."""

    annual_energy_tce: float
    size_basis: Literal["declared", "annualised"]
    band: SizeBand
    carbon_intensity_t_per_tce: float | None
    carbon_intensity_max_t_per_tce: float
    clean_share: float | None
    clean_share_min: float

    @property
    def carbon_intensity_ok(self) -> bool:
        value = self.carbon_intensity_t_per_tce
        return value is not None and value <= self.carbon_intensity_max_t_per_tce + 1e-12

    @property
    def clean_share_ok(self) -> bool:
        return self.clean_share is not None and self.clean_share >= self.clean_share_min - 1e-12

    @property
    def met(self) -> bool:
        return self.band.in_scheme and self.carbon_intensity_ok and self.clean_share_ok


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """Indicators of one local day (or other period) of the accounted span."""

    day: date
    energy_tce: float
    emission_t: float
    carbon_intensity_t_per_tce: float | None
    clean_share: float | None


@dataclass(frozen=True, slots=True)
class CarbonAccount:
    """Accounting of a period: park and per-enterprise series, totals and indicators."""

    horizon: Horizon
    grid_factor_kg_per_kwh: FloatArray
    park: EnergyCarbonSeries
    enterprises: Mapping[str, EnergyCarbonSeries]
    indicators: IndicatorResult


@dataclass(frozen=True, slots=True)
class _GeneratorFuel:
    fuel_kwh_per_kwh: float
    emission_kg_per_kwh: float
    kgce_per_kwh_fuel: float
    clean: bool


def account(
    park: Park,
    metered: MeteredPeriod,
    factor: GridEmissionFactor,
    indicators: IndicatorConfig,
) -> CarbonAccount:
    """Energy, carbon and indicators of the park and each enterprise over the metered period.

    Park figures are netted at the park's grid connection (one enterprise's export feeds
    another's import), so the enterprises' imports may add up to more than the park's.
    """
    horizon = metered.horizon
    n = horizon.intervals
    hours = horizon.hours
    factors = factor.at(horizon.starts())
    zeros = np.zeros(n)

    net_kw: dict[str, FloatArray] = {e.id: zeros.copy() for e in park.enterprises}
    pv_kw: dict[str, FloatArray] = {e.id: zeros.copy() for e in park.enterprises}
    gen_kw: dict[str, FloatArray] = {e.id: zeros.copy() for e in park.enterprises}
    fuel_kgce: dict[str, FloatArray] = {e.id: zeros.copy() for e in park.enterprises}
    clean_fuel_kgce: dict[str, FloatArray] = {e.id: zeros.copy() for e in park.enterprises}
    fuel_kg: dict[str, FloatArray] = {e.id: zeros.copy() for e in park.enterprises}
    known_assets = set()
    for enterprise, asset in park.iter_assets():
        known_assets.add(asset.id)
        power = metered.asset_power_kw.get(asset.id)
        if power is None:
            continue
        net_kw[enterprise.id] += power
        if isinstance(asset, PvAsset):
            pv_kw[enterprise.id] += np.maximum(-power, 0.0)
        elif isinstance(asset, Generator):
            fuel = _fuel_of(asset, indicators)
            output_kwh = np.maximum(-power, 0.0) * hours
            gen_kw[enterprise.id] += np.maximum(-power, 0.0)
            burnt_kgce = output_kwh * fuel.fuel_kwh_per_kwh * fuel.kgce_per_kwh_fuel
            fuel_kgce[enterprise.id] += burnt_kgce
            if fuel.clean:
                clean_fuel_kgce[enterprise.id] += burnt_kgce
            fuel_kg[enterprise.id] += output_kwh * fuel.emission_kg_per_kwh
    unknown = sorted(set(metered.asset_power_kw) - known_assets)
    if unknown:
        raise CarbonError(f"metered series for assets not enrolled in the park: {unknown[:5]}")
    for enterprise_id, other in metered.other_load_kw.items():
        if enterprise_id not in net_kw:
            raise CarbonError(f"metered other load for unknown enterprise '{enterprise_id}'")
        net_kw[enterprise_id] += other

    ids = list(net_kw)
    park_net = np.sum([net_kw[e] for e in ids], axis=0) if ids else zeros
    park_import_kwh = np.maximum(park_net, 0.0) * hours
    # Certificates are bought per year; the period is credited pro rata to its length and
    # spread over the intervals in proportion to their import, never beyond the import.
    period_green_kwh = settings_green_kwh(park.carbon, n * hours)
    total_import = float(park_import_kwh.sum())
    green_ratio = min(period_green_kwh / total_import, 1.0) if total_import > 0 else 0.0

    enterprise_imports = {e: np.maximum(net_kw[e], 0.0) * hours for e in ids}
    all_enterprise_import = float(sum(float(v.sum()) for v in enterprise_imports.values()))
    enterprise_green_ratio = (
        min(green_ratio * total_import / all_enterprise_import, 1.0)
        if all_enterprise_import > 0
        else 0.0
    )

    def build(
        *,
        net: FloatArray,
        pv: FloatArray,
        gen: FloatArray,
        burnt: FloatArray,
        clean_burnt: FloatArray,
        fuel_emission: FloatArray,
        ratio: float,
    ) -> EnergyCarbonSeries:
        import_kwh = np.maximum(net, 0.0) * hours
        export_kwh = np.maximum(-net, 0.0) * hours
        pv_kwh = pv * hours
        pv_self = np.maximum(pv_kwh - export_kwh, 0.0)
        generator_export = np.maximum(export_kwh - pv_kwh, 0.0)
        green = import_kwh * ratio
        grid_emission = (import_kwh - green) * factors
        elec = indicators.electricity_kgce_per_kwh
        # Generator electricity is not counted itself: the fuel burnt for it is. Exported
        # electricity is deducted, as comprehensive energy consumption nets outputs.
        energy = (import_kwh + pv_self - generator_export) * elec + burnt
        clean_grid = green + indicators.grid_clean_share * (import_kwh - green)
        clean = (pv_self + clean_grid) * elec + clean_burnt
        return EnergyCarbonSeries(
            import_kwh=import_kwh,
            export_kwh=export_kwh,
            pv_kwh=pv_kwh,
            pv_self_kwh=pv_self,
            generator_kwh=gen * hours,
            fuel_kgce=burnt,
            clean_fuel_kgce=clean_burnt,
            green_kwh=green,
            grid_emission_kg=grid_emission,
            fuel_emission_kg=fuel_emission,
            energy_kgce=energy,
            clean_kgce=np.minimum(clean, np.maximum(energy, 0.0)),
        )

    enterprises = {
        e: build(
            net=net_kw[e],
            pv=pv_kw[e],
            gen=gen_kw[e],
            burnt=fuel_kgce[e],
            clean_burnt=clean_fuel_kgce[e],
            fuel_emission=fuel_kg[e],
            ratio=enterprise_green_ratio,
        )
        for e in ids
    }

    def total(values: dict[str, FloatArray]) -> FloatArray:
        return np.sum([values[e] for e in ids], axis=0) if ids else zeros

    # On-site PV is netted at the park connection too: PV exported by one enterprise and
    # consumed by another is self-consumed at park level.
    park_series = build(
        net=park_net,
        pv=total(pv_kw),
        gen=total(gen_kw),
        burnt=total(fuel_kgce),
        clean_burnt=total(clean_fuel_kgce),
        fuel_emission=total(fuel_kg),
        ratio=green_ratio,
    )
    return CarbonAccount(
        horizon=horizon,
        grid_factor_kg_per_kwh=factors,
        park=park_series,
        enterprises=enterprises,
        indicators=evaluate_indicators(park_series.totals(), n * hours, indicators),
    )


def settings_green_kwh(settings: CarbonSettings, period_h: float) -> float:
    """Green electricity credited to a period of `period_h` hours from the yearly certificates."""
    return settings.green_certificates_mwh_per_year * 1000 * period_h / HOURS_PER_YEAR


def evaluate_indicators(
    totals: EnergyCarbonTotals, period_h: float, indicators: IndicatorConfig
) -> IndicatorResult:
    """The indicators of a period against the thresholds of the park's size band."""
    if indicators.declared_annual_energy_tce is not None:
        annual = indicators.declared_annual_energy_tce
        basis: Literal["declared", "annualised"] = "declared"
    else:
        if period_h <= 0:
            raise CarbonError("cannot annualise an empty accounting period")
        annual = totals.energy_tce * HOURS_PER_YEAR / period_h
        basis = "annualised"
    band = indicators.band_for(annual)
    return IndicatorResult(
        annual_energy_tce=annual,
        size_basis=basis,
        band=band,
        carbon_intensity_t_per_tce=totals.carbon_intensity_t_per_tce,
        carbon_intensity_max_t_per_tce=band.max_t_co2_per_tce,
        clean_share=totals.clean_share,
        clean_share_min=indicators.clean_energy_share_min,
    )


def _fuel_of(asset: Generator, indicators: IndicatorConfig) -> _GeneratorFuel:
    factors = indicators.fuel(asset.fuel)
    return _GeneratorFuel(
        fuel_kwh_per_kwh=asset.fuel_kwh_per_kwh,
        emission_kg_per_kwh=asset.emission_kg_per_kwh,
        kgce_per_kwh_fuel=factors.kgce_per_kwh_fuel,
        clean=factors.clean,
    )


def daily_trend(series: EnergyCarbonSeries, horizon: Horizon, timezone: str) -> list[TrendPoint]:
    """Indicators per local day of the period (partial days at the ends included)."""
    tz = ZoneInfo(timezone)
    days = [s.astimezone(tz).date() for s in horizon.starts()]
    points: list[TrendPoint] = []
    start = 0
    for index in range(1, len(days) + 1):
        if index == len(days) or days[index] != days[start]:
            part = slice(start, index)
            sub = EnergyCarbonSeries(
                **{name: getattr(series, name)[part] for name in _SERIES_FIELDS}
            )
            totals = sub.totals()
            points.append(
                TrendPoint(
                    day=days[start],
                    energy_tce=totals.energy_tce,
                    emission_t=totals.emission_t,
                    carbon_intensity_t_per_tce=totals.carbon_intensity_t_per_tce,
                    clean_share=totals.clean_share,
                )
            )
            start = index
    return points


_SERIES_FIELDS = tuple(EnergyCarbonSeries.__dataclass_fields__)


# --- carbon-aware dispatch: the cost-vs-emissions trade-off -----------------------------------


@dataclass(frozen=True, slots=True)
class TradeoffPoint:
    """One dispatch of the day under a carbon price: its energy cost and its emissions."""

    carbon_price_per_t: float
    status: str
    energy_cost: float | None  # currency, without the carbon term
    emission_t: float | None


def tradeoff_curve(
    evaluate: Callable[[float], TradeoffPoint], carbon_prices_per_t: Sequence[float]
) -> list[TradeoffPoint]:
    """Dispatch once per carbon price (ascending) and return each point of the curve."""
    prices = sorted(set(carbon_prices_per_t))
    if not prices or prices[0] < 0 or not all(math.isfinite(p) for p in prices):
        raise CarbonError(f"carbon prices must be finite and non-negative, got {prices}")
    return [evaluate(price) for price in prices]


def pareto_front(points: Sequence[TradeoffPoint]) -> list[TradeoffPoint]:
    """The solved points that no other solved point beats on both cost and emissions."""
    solved = [p for p in points if p.energy_cost is not None and p.emission_t is not None]
    front: list[TradeoffPoint] = []
    for p in solved:
        assert p.energy_cost is not None
        assert p.emission_t is not None
        dominated = any(
            q.energy_cost is not None
            and q.emission_t is not None
            and q.energy_cost <= p.energy_cost + 1e-9
            and q.emission_t <= p.emission_t + 1e-9
            and (q.energy_cost < p.energy_cost - 1e-9 or q.emission_t < p.emission_t - 1e-9)
            for q in solved
        )
        if not dominated:
            front.append(p)
    return front


def schedule_emissions_t(
    park: Park,
    horizon: Horizon,
    asset_power_kw: Mapping[str, FloatArray],
    factor: GridEmissionFactor,
    indicators: IndicatorConfig,
) -> float:
    """Emissions (tCO2) of a planned schedule, accounted as if it were metered."""
    result = account(park, MeteredPeriod(horizon, asset_power_kw), factor, indicators)
    return result.park.totals().emission_t


def local_day_horizon(day: date, timezone: str, interval: timedelta) -> Horizon:
    """The intervals of one local day (92, 96 or 100 quarter-hours around DST changes)."""
    tz = ZoneInfo(timezone)
    # Aware datetimes of one zone subtract as wall clocks: go through UTC for real durations.
    start = datetime.combine(day, time(0), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
    return Horizon(start, interval, int((end - start) // interval))
