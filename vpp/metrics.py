"""Prometheus metrics of the engine: one registry, the documented list in docs/metrics.md.

Conventions: `vpp_` prefix, base units (seconds, watts are kW here by name), counters end in
`_total`; no per-device label on high-volume series (labels are adapters, reasons, kinds).
A `Metrics` object is created per engine so tests can run several engines in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CYCLE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SOLVE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Every metric the engine exports, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # telemetry
        self.telemetry_received = Counter(
            "vpp_telemetry_received_total",
            "Readings accepted into fleet state",
            ["adapter"],
            registry=r,
        )
        self.telemetry_rejected = Counter(
            "vpp_telemetry_rejected_total",
            "Payloads or readings rejected, by reason",
            ["adapter", "reason"],
            registry=r,
        )
        self.message_latency = Histogram(
            "vpp_message_latency_seconds",
            "Delay from the oldest reading of a batch to its arrival in fleet state",
            ["adapter"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.config_errors = Counter(
            "vpp_config_errors_total", "Problems found in configuration files", ["kind"], registry=r
        )
        # fleet
        self.assets = Gauge(
            "vpp_assets", "Enrolled assets by availability", ["availability"], registry=r
        )
        self.park_power = Gauge(
            "vpp_park_power_kw", "Measured aggregate park power (positive = drawn)", registry=r
        )
        # adapters
        self.adapter_connected = Gauge(
            "vpp_adapter_connected",
            "1 when the adapter is connected to its peer",
            ["adapter"],
            registry=r,
        )
        self.adapter_reconnects = Counter(
            "vpp_adapter_reconnects_total",
            "Reconnections after a lost link",
            ["adapter"],
            registry=r,
        )
        # control
        self.target_power = Gauge("vpp_target_power_kw", "Park power target in force", registry=r)
        self.tracking_error = Gauge(
            "vpp_tracking_error_kw", "Target minus measured park power", registry=r
        )
        self.tracking_error_ratio = Gauge(
            "vpp_tracking_error_ratio",
            "Absolute tracking error over the absolute award deviation (0.05 = 5%)",
            registry=r,
        )
        self.cycle_duration = Histogram(
            "vpp_control_cycle_duration_seconds",
            "Compute time of one control cycle",
            buckets=CYCLE_BUCKETS_S,
            registry=r,
        )
        self.cycle_overruns = Counter(
            "vpp_control_cycle_overruns_total",
            "Cycles that took longer than the period",
            registry=r,
        )
        self.setpoints_sent = Counter(
            "vpp_setpoints_sent_total", "Setpoints sent to devices", ["adapter"], registry=r
        )
        self.setpoints_acked = Counter(
            "vpp_setpoints_acked_total",
            "Setpoints acknowledged as applied",
            ["adapter"],
            registry=r,
        )
        self.setpoints_refused = Counter(
            "vpp_setpoints_refused_total",
            "Setpoints not applied, by reason (timeout, refused, disconnected)",
            ["adapter", "reason"],
            registry=r,
        )
        self.setpoints_expired = Counter(
            "vpp_setpoints_expired_total",
            "Setpoints dropped because they expired before sending",
            registry=r,
        )
        self.setpoints_clamped = Counter(
            "vpp_setpoints_clamped_total", "Setpoints clamped to an asset's limits", registry=r
        )
        self.setpoint_latency = Histogram(
            "vpp_setpoint_ack_latency_seconds",
            "Time from sending a setpoint to its ack",
            ["adapter"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.fallbacks = Counter(
            "vpp_fallbacks_total",
            "Assets driven to their fallback on stale telemetry",
            ["mode"],
            registry=r,
        )
        # optimisation
        self.solve_duration = Histogram(
            "vpp_solver_duration_seconds",
            "Wall time of an optimisation",
            ["problem"],
            buckets=SOLVE_BUCKETS_S,
            registry=r,
        )
        self.solves = Counter(
            "vpp_solver_runs_total",
            "Optimisations by problem and status",
            ["problem", "status"],
            registry=r,
        )
        self.fallback_schedules = Counter(
            "vpp_schedule_fallbacks_total",
            "Times a fallback schedule replaced a failed solve",
            ["reason"],
            registry=r,
        )
        # storage
        self.storage_written = Counter(
            "vpp_storage_rows_written_total",
            "Rows written to the database, by table",
            ["table"],
            registry=r,
        )
        self.storage_dropped = Counter(
            "vpp_storage_rows_dropped_total",
            "Telemetry rows dropped because the write queue was full",
            registry=r,
        )
        self.storage_errors = Counter(
            "vpp_storage_errors_total", "Failed database writes (retried)", registry=r
        )
        self.storage_write_duration = Histogram(
            "vpp_storage_write_duration_seconds",
            "Time to write one batch to the database",
            buckets=CYCLE_BUCKETS_S,
            registry=r,
        )
        # API
        self.api_requests = Counter(
            "vpp_api_requests_total", "HTTP API requests", ["method", "route", "status"], registry=r
        )
        self.api_rejected = Counter(
            "vpp_api_rejected_total", "HTTP API requests refused, by reason", ["reason"], registry=r
        )
