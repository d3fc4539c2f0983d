"""Solar geometry, clear-sky irradiance and PV output, vectorised with numpy.

Used by the simulator (PV power under clear sky with cloud noise) and by dispatch forecasting.
The chain is: sun position (NOAA solar calculator equations, after Meeus) -> clear-sky global
horizontal irradiance (simplified Ineichen-Perez with site altitude and Linke turbidity) ->
beam / diffuse split (Erbs) -> plane-of-array irradiance (isotropic sky, ground albedo) ->
AC power (kWp x POA / 1000 W/m² x performance ratio, optional temperature derate, inverter cap).

Every function takes arrays (or floats) and broadcasts; angles are in degrees, irradiance in
W/m², times are timezone-aware datetimes or numpy datetime64 values read as UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from vpp.config.schema import Location, PvAsset

FloatArray = npt.NDArray[np.float64]
ArrayLike = FloatArray | float | Sequence[float]
Times = Sequence[datetime] | npt.NDArray[np.datetime64] | npt.NDArray[np.object_] | datetime

SOLAR_CONSTANT_W_M2 = 1361.0
STC_IRRADIANCE_W_M2 = 1000.0  # kWp is rated at this plane-of-array irradiance
UNIX_EPOCH_JULIAN_DAY = 2440587.5
J2000_JULIAN_DAY = 2451545.0
DEFAULT_LINKE_TURBIDITY = 3.0  # rural clear sky; hazy industrial areas run 4-5
DEFAULT_ALBEDO = 0.2
MAX_BEAM_ZENITH_DEG = 87.0  # beyond this the Erbs beam estimate is noise: all diffuse
MIN_COS_ZENITH = 0.065  # floor for the clearness-index denominator near the horizon
NOCT_C = 45.0  # nominal operating cell temperature: cell at 800 W/m², 20 °C ambient
TEMP_COEFF_PER_K = -0.004  # crystalline silicon power temperature coefficient


@dataclass(frozen=True, slots=True)
class SolarPosition:
    """Sun position and orbit terms for an array of times (all arrays of the same shape)."""

    zenith_deg: FloatArray  # geometric, without refraction; > 90 below the horizon
    azimuth_deg: FloatArray  # clockwise from north: 90 east, 180 south
    declination_deg: FloatArray
    equation_of_time_min: FloatArray
    hour_angle_deg: FloatArray  # 0 at solar noon, negative in the morning
    dni_extra_w_m2: FloatArray  # extraterrestrial normal irradiance at the sun-earth distance

    @property
    def cos_zenith(self) -> FloatArray:
        return np.cos(np.radians(self.zenith_deg))

    @property
    def elevation_deg(self) -> FloatArray:
        return 90.0 - self.zenith_deg


@dataclass(frozen=True, slots=True)
class Irradiance:
    """Global horizontal, direct normal and diffuse horizontal irradiance, W/m²."""

    ghi_w_m2: FloatArray
    dni_w_m2: FloatArray
    dhi_w_m2: FloatArray


def epoch_seconds(times: Times) -> FloatArray:
    """Seconds since 1970-01-01 UTC for timezone-aware datetimes or datetime64 (read as UTC)."""
    if isinstance(times, datetime):
        times = [times]
    if isinstance(times, np.ndarray) and np.issubdtype(times.dtype, np.datetime64):
        return times.astype("datetime64[us]").astype(np.int64).astype(np.float64) / 1e6
    values: list[float] = []
    for moment in times:
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise ValueError(f"solar times must be timezone-aware datetimes, got {moment!r}")
        values.append(moment.timestamp())
    return np.asarray(values, dtype=np.float64)


def solar_position(latitude_deg: float, longitude_deg: float, epoch_s: ArrayLike) -> SolarPosition:
    """Sun position by the NOAA solar calculator equations (about 0.01° for 1800-2100).

    `epoch_s` is seconds since the Unix epoch (see `epoch_seconds`); east longitude positive.
    """
    seconds = np.asarray(epoch_s, dtype=np.float64)
    julian_century = (seconds / 86400.0 + UNIX_EPOCH_JULIAN_DAY - J2000_JULIAN_DAY) / 36525.0
    jc = julian_century
    mean_longitude = np.mod(280.46646 + jc * (36000.76983 + jc * 0.0003032), 360.0)
    mean_anomaly = 357.52911 + jc * (35999.05029 - 0.0001537 * jc)
    eccentricity = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    anomaly_rad = np.radians(mean_anomaly)
    centre = (
        np.sin(anomaly_rad) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
        + np.sin(2 * anomaly_rad) * (0.019993 - 0.000101 * jc)
        + np.sin(3 * anomaly_rad) * 0.000289
    )
    true_longitude = mean_longitude + centre
    true_anomaly_rad = np.radians(mean_anomaly + centre)
    radius_au = (1.000001018 * (1 - eccentricity**2)) / (
        1 + eccentricity * np.cos(true_anomaly_rad)
    )
    omega_rad = np.radians(125.04 - 1934.136 * jc)
    apparent_longitude_rad = np.radians(true_longitude - 0.00569 - 0.00478 * np.sin(omega_rad))
    mean_obliquity = (
        23.0 + (26.0 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60.0) / 60.0
    )
    obliquity_rad = np.radians(mean_obliquity + 0.00256 * np.cos(omega_rad))
    declination_rad = np.arcsin(np.sin(obliquity_rad) * np.sin(apparent_longitude_rad))

    vary = np.tan(obliquity_rad / 2) ** 2
    l0_rad = np.radians(mean_longitude)
    equation_of_time_min = 4.0 * np.degrees(
        vary * np.sin(2 * l0_rad)
        - 2 * eccentricity * np.sin(anomaly_rad)
        + 4 * eccentricity * vary * np.sin(anomaly_rad) * np.cos(2 * l0_rad)
        - 0.5 * vary**2 * np.sin(4 * l0_rad)
        - 1.25 * eccentricity**2 * np.sin(2 * anomaly_rad)
    )

    utc_minutes = np.mod(seconds, 86400.0) / 60.0
    true_solar_minutes = np.mod(utc_minutes + equation_of_time_min + 4.0 * longitude_deg, 1440.0)
    hour_angle_deg = true_solar_minutes / 4.0 - 180.0
    hour_angle_rad = np.radians(hour_angle_deg)
    latitude_rad = np.radians(latitude_deg)
    cos_zenith = np.sin(latitude_rad) * np.sin(declination_rad) + np.cos(latitude_rad) * np.cos(
        declination_rad
    ) * np.cos(hour_angle_rad)
    zenith_deg = np.degrees(np.arccos(np.clip(cos_zenith, -1.0, 1.0)))
    # atan2 form of the spherical-triangle azimuth: defined at the poles and at solar noon
    azimuth_deg = np.mod(
        np.degrees(
            np.arctan2(
                np.sin(hour_angle_rad),
                np.cos(hour_angle_rad) * np.sin(latitude_rad)
                - np.tan(declination_rad) * np.cos(latitude_rad),
            )
        )
        + 180.0,
        360.0,
    )
    return SolarPosition(
        zenith_deg=np.asarray(zenith_deg, dtype=np.float64),
        azimuth_deg=np.asarray(azimuth_deg, dtype=np.float64),
        declination_deg=np.asarray(np.degrees(declination_rad), dtype=np.float64),
        equation_of_time_min=np.asarray(equation_of_time_min, dtype=np.float64),
        hour_angle_deg=np.asarray(hour_angle_deg, dtype=np.float64),
        dni_extra_w_m2=np.asarray(SOLAR_CONSTANT_W_M2 / radius_au**2, dtype=np.float64),
    )


def solar_position_at(location: Location, times: Times) -> SolarPosition:
    """`solar_position` for a configured location and datetimes."""
    return solar_position(location.latitude_deg, location.longitude_deg, epoch_seconds(times))


def relative_airmass(zenith_deg: ArrayLike) -> FloatArray:
    """Kasten-Young (1989) relative optical air mass; NaN with the sun below the horizon."""
    zenith = np.asarray(zenith_deg, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        airmass = 1.0 / (np.cos(np.radians(zenith)) + 0.50572 * (96.07995 - zenith) ** -1.6364)
    return np.where(zenith < 90.0, airmass, np.nan)


def pressure_pa(altitude_m: ArrayLike) -> FloatArray:
    """Standard-atmosphere pressure at an altitude."""
    altitude = np.asarray(altitude_m, dtype=np.float64)
    return 101325.0 * (1.0 - 2.25577e-5 * altitude) ** 5.25588


def clear_sky_ghi(
    zenith_deg: ArrayLike,
    dni_extra_w_m2: ArrayLike = SOLAR_CONSTANT_W_M2,
    altitude_m: float = 0.0,
    linke_turbidity: float = DEFAULT_LINKE_TURBIDITY,
) -> FloatArray:
    """Clear-sky global horizontal irradiance by Ineichen-Perez (2002); 0 at night."""
    zenith = np.asarray(zenith_deg, dtype=np.float64)
    cos_zenith = np.cos(np.radians(zenith))
    airmass = relative_airmass(zenith) * pressure_pa(altitude_m) / 101325.0
    fh1 = np.exp(-altitude_m / 8000.0)
    fh2 = np.exp(-altitude_m / 1250.0)
    cg1 = 5.09e-5 * altitude_m + 0.868
    cg2 = 3.92e-5 * altitude_m + 0.0387
    with np.errstate(invalid="ignore"):
        ghi = (
            cg1
            * np.asarray(dni_extra_w_m2, dtype=np.float64)
            * cos_zenith
            * np.exp(-cg2 * airmass * (fh1 + fh2 * (linke_turbidity - 1.0)))
        )
    return np.asarray(np.where(zenith < 90.0, np.nan_to_num(ghi, nan=0.0), 0.0), dtype=np.float64)


def haurwitz_ghi(zenith_deg: ArrayLike) -> FloatArray:
    """Haurwitz (1945) clear-sky GHI: the simplest model, used as an independent cross-check."""
    cos_zenith = np.cos(np.radians(np.asarray(zenith_deg, dtype=np.float64)))
    safe = np.maximum(cos_zenith, 1e-6)
    return np.where(cos_zenith > 0, 1098.0 * cos_zenith * np.exp(-0.059 / safe), 0.0)


def erbs(
    ghi_w_m2: ArrayLike, zenith_deg: ArrayLike, dni_extra_w_m2: ArrayLike = SOLAR_CONSTANT_W_M2
) -> Irradiance:
    """Split GHI into beam (DNI) and diffuse (DHI) by the Erbs (1982) diffuse-fraction fit."""
    ghi = np.maximum(np.asarray(ghi_w_m2, dtype=np.float64), 0.0)
    zenith = np.asarray(zenith_deg, dtype=np.float64)
    cos_zenith = np.cos(np.radians(zenith))
    extra_horizontal = np.asarray(dni_extra_w_m2, dtype=np.float64) * np.maximum(
        cos_zenith, MIN_COS_ZENITH
    )
    kt = np.clip(ghi / extra_horizontal, 0.0, 1.0)
    diffuse_fraction = np.where(
        kt <= 0.22,
        1.0 - 0.09 * kt,
        np.where(
            kt <= 0.80,
            0.9511 - 0.1604 * kt + 4.388 * kt**2 - 16.638 * kt**3 + 12.336 * kt**4,
            0.165,
        ),
    )
    dhi = diffuse_fraction * ghi
    beam_ok = (zenith < MAX_BEAM_ZENITH_DEG) & (cos_zenith > 0)
    dni = np.where(beam_ok, (ghi - dhi) / np.where(beam_ok, cos_zenith, 1.0), 0.0)
    dhi = np.where(beam_ok, dhi, ghi)  # no beam: everything that arrives is diffuse
    ghi_b, dni_b, dhi_b = np.broadcast_arrays(ghi, dni, dhi)
    return Irradiance(
        ghi_w_m2=np.asarray(ghi_b, dtype=np.float64),
        dni_w_m2=np.asarray(dni_b, dtype=np.float64),
        dhi_w_m2=np.asarray(dhi_b, dtype=np.float64),
    )


def angle_of_incidence_cos(
    zenith_deg: ArrayLike,
    sun_azimuth_deg: ArrayLike,
    tilt_deg: ArrayLike,
    surface_azimuth_deg: ArrayLike,
) -> FloatArray:
    """Cosine of the angle between the sun and the panel normal (negative: sun behind)."""
    zenith = np.radians(np.asarray(zenith_deg, dtype=np.float64))
    tilt = np.radians(np.asarray(tilt_deg, dtype=np.float64))
    relative_azimuth = np.radians(
        np.asarray(sun_azimuth_deg, dtype=np.float64)
        - np.asarray(surface_azimuth_deg, dtype=np.float64)
    )
    return np.asarray(
        np.cos(zenith) * np.cos(tilt) + np.sin(zenith) * np.sin(tilt) * np.cos(relative_azimuth),
        dtype=np.float64,
    )


def poa_irradiance(
    irradiance: Irradiance,
    zenith_deg: ArrayLike,
    sun_azimuth_deg: ArrayLike,
    tilt_deg: ArrayLike,
    surface_azimuth_deg: ArrayLike,
    albedo: ArrayLike = DEFAULT_ALBEDO,
) -> FloatArray:
    """Plane-of-array global irradiance: beam + isotropic sky diffuse + ground reflection."""
    cos_aoi = angle_of_incidence_cos(zenith_deg, sun_azimuth_deg, tilt_deg, surface_azimuth_deg)
    cos_tilt = np.cos(np.radians(np.asarray(tilt_deg, dtype=np.float64)))
    beam = irradiance.dni_w_m2 * np.maximum(cos_aoi, 0.0)
    sky = irradiance.dhi_w_m2 * (1.0 + cos_tilt) / 2.0
    ground = irradiance.ghi_w_m2 * np.asarray(albedo, dtype=np.float64) * (1.0 - cos_tilt) / 2.0
    return np.asarray(np.maximum(beam + sky + ground, 0.0), dtype=np.float64)


def temperature_derate(poa_w_m2: ArrayLike, ambient_c: ArrayLike) -> FloatArray:
    """Power factor from cell temperature (NOCT model), relative to 25 °C; never above 1.1."""
    poa = np.asarray(poa_w_m2, dtype=np.float64)
    cell_c = np.asarray(ambient_c, dtype=np.float64) + (NOCT_C - 20.0) / 800.0 * poa
    return np.asarray(np.clip(1.0 + TEMP_COEFF_PER_K * (cell_c - 25.0), 0.0, 1.1), np.float64)


def pv_ac_kw(
    poa_w_m2: ArrayLike,
    capacity_kwp: ArrayLike,
    performance_ratio: ArrayLike,
    max_output_kw: ArrayLike,
    ambient_c: ArrayLike | None = None,
) -> FloatArray:
    """AC output (kW, >= 0) from plane-of-array irradiance, capped at the inverter rating."""
    poa = np.asarray(poa_w_m2, dtype=np.float64)
    power = (
        np.asarray(capacity_kwp, dtype=np.float64)
        * poa
        / STC_IRRADIANCE_W_M2
        * np.asarray(performance_ratio, dtype=np.float64)
    )
    if ambient_c is not None:
        power = power * temperature_derate(poa, ambient_c)
    return np.asarray(
        np.clip(power, 0.0, np.asarray(max_output_kw, dtype=np.float64)), dtype=np.float64
    )


def clear_sky_irradiance(
    position: SolarPosition,
    altitude_m: float = 0.0,
    linke_turbidity: float = DEFAULT_LINKE_TURBIDITY,
    clear_sky_index: ArrayLike = 1.0,
) -> Irradiance:
    """Clear-sky GHI scaled by a clear-sky index (1 = clear, cloud noise below 1), split by Erbs."""
    ghi = clear_sky_ghi(position.zenith_deg, position.dni_extra_w_m2, altitude_m, linke_turbidity)
    ghi = ghi * np.asarray(clear_sky_index, dtype=np.float64)
    return erbs(ghi, position.zenith_deg, position.dni_extra_w_m2)


def pv_available_kw(
    asset: PvAsset,
    location: Location,
    times: Times,
    *,
    linke_turbidity: float = DEFAULT_LINKE_TURBIDITY,
    albedo: float = DEFAULT_ALBEDO,
    ambient_c: ArrayLike | None = None,
    clear_sky_index: ArrayLike = 1.0,
) -> FloatArray:
    """PV output the array could deliver at each time (magnitude of generation, kW, >= 0).

    Clear sky unless `clear_sky_index` (broadcast over times, 0..1) says otherwise; with
    `ambient_c` the output is derated for cell temperature.
    """
    position = solar_position_at(location, times)
    irradiance = clear_sky_irradiance(
        position, location.altitude_m, linke_turbidity, clear_sky_index
    )
    poa = poa_irradiance(
        irradiance,
        position.zenith_deg,
        position.azimuth_deg,
        asset.tilt_deg,
        asset.azimuth_deg,
        albedo,
    )
    return pv_ac_kw(
        poa, asset.capacity_kwp, asset.performance_ratio, asset.max_output_kw, ambient_c
    )
