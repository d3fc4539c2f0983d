"""Persistence: SQLite (default, WAL, one file) and PostgreSQL behind one storage layer.

The schema is versioned: `MIGRATIONS` is an append-only list and `migrate()` applies what a
database lacks, inside a transaction. Times are stored as integer milliseconds since the epoch
(UTC) so that both back-ends (and TimescaleDB hypertables) index them the same way. Calls are
synchronous DB-API; the engine runs them off the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from vpp.domain import Award, DrEvent, Interval, Measurement, Setpoint, SetpointAck
from vpp.errors import VPPError


class StorageError(VPPError):
    """The database refused an operation or cannot be reached; `url` names which one."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(f"{_redact(url)}: {message}")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# One migration = a list of statements; `{id}` `{real}` `{text}` are filled per dialect.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE telemetry (
            asset_id {text} NOT NULL, ts_ms BIGINT NOT NULL, power_kw {real} NOT NULL,
            soc_fraction {real}, temperature_c {real}, energy_kwh {real}, available SMALLINT NOT NULL,
            PRIMARY KEY (asset_id, ts_ms))""",
        """CREATE TABLE telemetry_rollup (
            asset_id {text} NOT NULL, start_ms BIGINT NOT NULL, length_s INTEGER NOT NULL,
            mean_power_kw {real} NOT NULL, samples INTEGER NOT NULL,
            PRIMARY KEY (asset_id, start_ms, length_s))""",
        """CREATE TABLE schedules (
            id {id}, created_ms BIGINT NOT NULL, start_ms BIGINT NOT NULL, interval_s INTEGER NOT NULL,
            status {text} NOT NULL, objective {real}, payload {text} NOT NULL)""",
        """CREATE TABLE bids (
            id {id}, created_ms BIGINT NOT NULL, market {text} NOT NULL, day {text} NOT NULL,
            payload {text} NOT NULL)""",
        """CREATE TABLE awards (
            market {text} NOT NULL, start_ms BIGINT NOT NULL, length_s INTEGER NOT NULL,
            power_kw {real} NOT NULL, price_per_mwh {real} NOT NULL, received_ms BIGINT NOT NULL,
            PRIMARY KEY (market, start_ms))""",
        """CREATE TABLE dr_events (
            event_id {text} PRIMARY KEY, product {text} NOT NULL, start_ms BIGINT NOT NULL,
            end_ms BIGINT NOT NULL, notified_ms BIGINT NOT NULL, reduction_kw {real} NOT NULL,
            price_per_mwh {real} NOT NULL, invitation {text} NOT NULL, opted_in SMALLINT NOT NULL)""",
        """CREATE TABLE settlements (
            id {id}, period_start_ms BIGINT NOT NULL, period_end_ms BIGINT NOT NULL,
            scope {text} NOT NULL, enterprise_id {text}, payload {text} NOT NULL)""",
        """CREATE TABLE setpoint_audit (
            correlation_id {text} PRIMARY KEY, asset_id {text} NOT NULL, power_kw {real} NOT NULL,
            issued_ms BIGINT NOT NULL, valid_until_ms BIGINT NOT NULL, acked SMALLINT,
            applied_power_kw {real}, ack_ms BIGINT, reason {text})""",
        "CREATE INDEX telemetry_ts ON telemetry (ts_ms)",
        "CREATE INDEX awards_start ON awards (start_ms)",
        "CREATE INDEX setpoint_audit_asset ON setpoint_audit (asset_id, issued_ms)",
    ],
]

_DIALECTS = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "text": "TEXT"},
    "postgresql": {"id": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION", "text": "TEXT"},
}


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return round(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class _Connection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Rollup:
    asset_id: str
    start: datetime
    length: timedelta
    mean_power_kw: float
    samples: int


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    """A saved plan: when it was made, its horizon, status, objective and payload (JSON)."""

    created: datetime
    start: datetime
    interval: timedelta
    status: str
    objective: float | None
    payload: Any


class Store:
    """One database: telemetry history, plans, market records and the setpoint audit log."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self.dialect, self._conn = _connect(url)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._tx() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_ms BIGINT NOT NULL)"
            )
            cur.execute("SELECT MAX(version) FROM schema_version")
            row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def migrate(self) -> int:
        """Apply missing migrations; return the schema version now in force."""
        current = self.schema_version()
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            with self._tx() as cur:
                for statement in statements:
                    cur.execute(statement.format(**_DIALECTS[self.dialect]))
                cur.execute(
                    self._sql("INSERT INTO schema_version (version, applied_ms) VALUES (?, ?)"),
                    (version, to_ms(datetime.now(UTC))),
                )
            current = version
        return current

    # --- telemetry -------------------------------------------------------------------------

    def write_telemetry(self, batch: Sequence[Measurement]) -> int:
        """Store readings; a reading already stored (same asset and time) is kept as it was."""
        rows = [
            (
                m.asset_id,
                to_ms(m.timestamp),
                m.power_kw,
                m.soc_fraction,
                m.temperature_c,
                m.energy_kwh,
                1 if m.available else 0,
            )
            for m in batch
        ]
        if not rows:
            return 0
        conflict = "ON CONFLICT (asset_id, ts_ms) DO NOTHING"
        with self._tx() as cur:
            cur.executemany(
                self._sql(
                    "INSERT INTO telemetry (asset_id, ts_ms, power_kw, soc_fraction, temperature_c, "
                    f"energy_kwh, available) VALUES (?, ?, ?, ?, ?, ?, ?) {conflict}"
                ),
                rows,
            )
        return len(rows)

    def telemetry(self, asset_id: str, start: datetime, end: datetime) -> list[Measurement]:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT asset_id, ts_ms, power_kw, soc_fraction, temperature_c, energy_kwh, available "
                    "FROM telemetry WHERE asset_id = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms"
                ),
                (asset_id, to_ms(start), to_ms(end)),
            )
            rows = cur.fetchall()
        return [
            Measurement(r[0], from_ms(int(r[1])), float(r[2]), r[3], r[4], r[5], bool(r[6]))
            for r in rows
        ]

    def latest_telemetry(self) -> list[Measurement]:
        """The newest stored reading of every asset (to warm fleet state after a restart)."""
        with self._tx() as cur:
            cur.execute(
                "SELECT t.asset_id, t.ts_ms, t.power_kw, t.soc_fraction, t.temperature_c, t.energy_kwh, "
                "t.available FROM telemetry t JOIN (SELECT asset_id, MAX(ts_ms) AS ts_ms FROM telemetry "
                "GROUP BY asset_id) last ON t.asset_id = last.asset_id AND t.ts_ms = last.ts_ms"
            )
            rows = cur.fetchall()
        return [
            Measurement(r[0], from_ms(int(r[1])), float(r[2]), r[3], r[4], r[5], bool(r[6]))
            for r in rows
        ]

    def downsample(self, older_than: datetime, length: timedelta = timedelta(minutes=15)) -> int:
        """Roll raw readings older than `older_than` into interval means and delete them.

        Returns how many raw readings were rolled up. Means of a bucket already rolled up are
        merged by sample count, so repeated calls never lose readings.
        """
        length_s = int(length.total_seconds())
        length_ms = length_s * 1000
        cutoff = to_ms(older_than) // length_ms * length_ms  # only whole buckets
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    f"SELECT asset_id, (ts_ms / {length_ms}) * {length_ms} AS bucket, AVG(power_kw), COUNT(*) "
                    "FROM telemetry WHERE ts_ms < ? GROUP BY asset_id, bucket"
                ),
                (cutoff,),
            )
            buckets = cur.fetchall()
            for asset_id, bucket, mean, count in buckets:
                cur.execute(
                    self._sql(
                        "SELECT mean_power_kw, samples FROM telemetry_rollup "
                        "WHERE asset_id = ? AND start_ms = ? AND length_s = ?"
                    ),
                    (asset_id, int(bucket), length_s),
                )
                existing = cur.fetchone()
                if existing is None:
                    cur.execute(
                        self._sql(
                            "INSERT INTO telemetry_rollup (asset_id, start_ms, length_s, mean_power_kw, samples) "
                            "VALUES (?, ?, ?, ?, ?)"
                        ),
                        (asset_id, int(bucket), length_s, float(mean), int(count)),
                    )
                else:
                    total = int(existing[1]) + int(count)
                    merged = (
                        float(existing[0]) * int(existing[1]) + float(mean) * int(count)
                    ) / total
                    cur.execute(
                        self._sql(
                            "UPDATE telemetry_rollup SET mean_power_kw = ?, samples = ? "
                            "WHERE asset_id = ? AND start_ms = ? AND length_s = ?"
                        ),
                        (merged, total, asset_id, int(bucket), length_s),
                    )
            cur.execute(self._sql("DELETE FROM telemetry WHERE ts_ms < ?"), (cutoff,))
            deleted = cur.rowcount
        return int(deleted)

    def rollups(self, asset_id: str, start: datetime, end: datetime) -> list[Rollup]:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT asset_id, start_ms, length_s, mean_power_kw, samples FROM telemetry_rollup "
                    "WHERE asset_id = ? AND start_ms >= ? AND start_ms < ? ORDER BY start_ms"
                ),
                (asset_id, to_ms(start), to_ms(end)),
            )
            rows = cur.fetchall()
        return [
            Rollup(r[0], from_ms(int(r[1])), timedelta(seconds=int(r[2])), float(r[3]), int(r[4]))
            for r in rows
        ]

    # --- plans and market records ----------------------------------------------------------

    def save_schedule(
        self,
        created: datetime,
        start: datetime,
        interval: timedelta,
        status: str,
        objective: float | None,
        payload: Any,
    ) -> int:
        return self._insert_returning_id(
            "INSERT INTO schedules (created_ms, start_ms, interval_s, status, objective, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (
                to_ms(created),
                to_ms(start),
                int(interval.total_seconds()),
                status,
                objective,
                json.dumps(payload),
            ),
        )

    def latest_schedule(self) -> StoredSchedule | None:
        with self._tx() as cur:
            cur.execute(
                "SELECT created_ms, start_ms, interval_s, status, objective, payload "
                "FROM schedules ORDER BY id DESC LIMIT 1"
            )
            row = cur.fetchone()
        if row is None:
            return None
        return StoredSchedule(
            created=from_ms(int(row[0])),
            start=from_ms(int(row[1])),
            interval=timedelta(seconds=float(row[2])),
            status=str(row[3]),
            objective=None if row[4] is None else float(row[4]),
            payload=json.loads(row[5]),
        )

    def save_bids(self, created: datetime, market: str, day: str, payload: Any) -> int:
        return self._insert_returning_id(
            "INSERT INTO bids (created_ms, market, day, payload) VALUES (?, ?, ?, ?)",
            (to_ms(created), market, day, json.dumps(payload)),
        )

    def save_awards(self, awards: Sequence[Award], received: datetime) -> None:
        """Store awards; a later award for the same market interval replaces the earlier one."""
        rows = [
            (
                a.market,
                to_ms(a.interval.start),
                int(a.interval.length.total_seconds()),
                a.power_kw,
                a.price_per_mwh,
                to_ms(received),
            )
            for a in awards
        ]
        with self._tx() as cur:
            cur.executemany(
                self._sql(
                    "INSERT INTO awards (market, start_ms, length_s, power_kw, price_per_mwh, received_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (market, start_ms) DO UPDATE SET "
                    "length_s = excluded.length_s, power_kw = excluded.power_kw, "
                    "price_per_mwh = excluded.price_per_mwh, received_ms = excluded.received_ms"
                ),
                rows,
            )

    def awards(self, start: datetime, end: datetime) -> list[Award]:
        return [award for award, _ in self.received_awards(start, end)]

    def received_awards(self, start: datetime, end: datetime) -> list[tuple[Award, datetime]]:
        """Awards for intervals starting in [start, end), each with when it was received
        (its notice counts from then, also after a restart)."""
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT market, start_ms, length_s, power_kw, price_per_mwh, received_ms "
                    "FROM awards WHERE start_ms >= ? AND start_ms < ? ORDER BY start_ms, market"
                ),
                (to_ms(start), to_ms(end)),
            )
            rows = cur.fetchall()
        return [
            (
                Award(
                    Interval(from_ms(int(r[1])), timedelta(seconds=int(r[2]))),
                    float(r[3]),
                    float(r[4]),
                    str(r[0]),
                ),
                from_ms(int(r[5])),
            )
            for r in rows
        ]

    def save_dr_event(self, event: DrEvent) -> None:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO dr_events (event_id, product, start_ms, end_ms, notified_ms, reduction_kw, "
                    "price_per_mwh, invitation, opted_in) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (event_id) DO UPDATE SET product = excluded.product, start_ms = excluded.start_ms, "
                    "end_ms = excluded.end_ms, notified_ms = excluded.notified_ms, "
                    "reduction_kw = excluded.reduction_kw, price_per_mwh = excluded.price_per_mwh, "
                    "invitation = excluded.invitation, opted_in = excluded.opted_in"
                ),
                (
                    event.event_id,
                    event.product,
                    to_ms(event.start),
                    to_ms(event.end),
                    to_ms(event.notified_at),
                    event.reduction_kw,
                    event.price_per_mwh,
                    event.invitation,
                    1 if event.opted_in else 0,
                ),
            )

    def dr_events(self, start: datetime, end: datetime) -> list[DrEvent]:
        """Events overlapping [start, end)."""
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT event_id, product, start_ms, end_ms, notified_ms, reduction_kw, price_per_mwh, "
                    "invitation, opted_in FROM dr_events WHERE end_ms > ? AND start_ms < ? ORDER BY start_ms"
                ),
                (to_ms(start), to_ms(end)),
            )
            rows = cur.fetchall()
        return [
            DrEvent(
                event_id=str(r[0]),
                product=str(r[1]),
                start=from_ms(int(r[2])),
                end=from_ms(int(r[3])),
                notified_at=from_ms(int(r[4])),
                reduction_kw=float(r[5]),
                price_per_mwh=float(r[6]),
                invitation=str(r[7]),
                opted_in=bool(r[8]),
            )
            for r in rows
        ]

    def save_settlement(
        self,
        period_start: datetime,
        period_end: datetime,
        scope: str,
        enterprise_id: str | None,
        payload: Any,
    ) -> int:
        return self._insert_returning_id(
            "INSERT INTO settlements (period_start_ms, period_end_ms, scope, enterprise_id, payload) VALUES (?, ?, ?, ?, ?)",
            (to_ms(period_start), to_ms(period_end), scope, enterprise_id, json.dumps(payload)),
        )

    def settlements(
        self, start: datetime, end: datetime, enterprise_id: str | None = None
    ) -> list[dict[str, Any]]:
        query = (
            "SELECT period_start_ms, period_end_ms, scope, enterprise_id, payload FROM settlements "
            "WHERE period_start_ms >= ? AND period_start_ms < ?"
        )
        params: tuple[Any, ...] = (to_ms(start), to_ms(end))
        if enterprise_id is not None:
            query += " AND enterprise_id = ?"
            params = (*params, enterprise_id)
        with self._tx() as cur:
            cur.execute(self._sql(query + " ORDER BY id"), params)
            rows = cur.fetchall()
        return [
            {
                "period_start": from_ms(int(r[0])).isoformat(),
                "period_end": from_ms(int(r[1])).isoformat(),
                "scope": r[2],
                "enterprise_id": r[3],
                **json.loads(r[4]),
            }
            for r in rows
        ]

    # --- audit -----------------------------------------------------------------------------

    def audit_setpoints(self, setpoints: Sequence[Setpoint]) -> None:
        rows = [
            (s.correlation_id, s.asset_id, s.power_kw, to_ms(s.issued_at), to_ms(s.valid_until))
            for s in setpoints
        ]
        with self._tx() as cur:
            cur.executemany(
                self._sql(
                    "INSERT INTO setpoint_audit (correlation_id, asset_id, power_kw, issued_ms, valid_until_ms) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (correlation_id) DO NOTHING"
                ),
                rows,
            )

    def audit_acks(self, acks: Sequence[SetpointAck]) -> None:
        rows = [
            (1 if a.accepted else 0, a.applied_power_kw, to_ms(a.at), a.reason, a.correlation_id)
            for a in acks
        ]
        with self._tx() as cur:
            cur.executemany(
                self._sql(
                    "UPDATE setpoint_audit SET acked = ?, applied_power_kw = ?, ack_ms = ?, reason = ? "
                    "WHERE correlation_id = ?"
                ),
                rows,
            )

    def setpoint_audit(
        self, asset_id: str, start: datetime, end: datetime
    ) -> list[tuple[Setpoint, SetpointAck | None]]:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT correlation_id, asset_id, power_kw, issued_ms, valid_until_ms, acked, applied_power_kw, "
                    "ack_ms, reason FROM setpoint_audit WHERE asset_id = ? AND issued_ms >= ? AND issued_ms < ? "
                    "ORDER BY issued_ms"
                ),
                (asset_id, to_ms(start), to_ms(end)),
            )
            rows = cur.fetchall()
        result: list[tuple[Setpoint, SetpointAck | None]] = []
        for r in rows:
            setpoint = Setpoint(
                str(r[1]), float(r[2]), from_ms(int(r[3])), from_ms(int(r[4])), str(r[0])
            )
            ack = (
                None
                if r[5] is None
                else SetpointAck(
                    str(r[0]),
                    str(r[1]),
                    bool(r[5]),
                    from_ms(int(r[7])),
                    None if r[6] is None else float(r[6]),
                    str(r[8] or ""),
                )
            )
            result.append((setpoint, ack))
        return result

    # --- internals -------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgresql" else statement

    def _insert_returning_id(self, statement: str, params: tuple[Any, ...]) -> int:
        with self._tx() as cur:
            if self.dialect == "postgresql":
                cur.execute(self._sql(statement) + " RETURNING id", params)
                return int(cur.fetchone()[0])
            cur.execute(statement, params)
            return int(cur.lastrowid)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield cur
                self._conn.commit()
            except Exception as err:
                self._conn.rollback()
                if isinstance(err, VPPError | ValueError | KeyError):
                    raise
                raise StorageError(self.url, f"{type(err).__name__}: {err}") from err
            finally:
                cur.close()


def _connect(url: str) -> tuple[str, _Connection]:
    if url.startswith("sqlite://"):
        path = (
            url.removeprefix("sqlite://").removeprefix("/") if url.startswith("sqlite:///") else ""
        )
        target = path or ":memory:"
        if target != ":memory:":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(target, check_same_thread=False, isolation_level="DEFERRED")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as err:
            raise StorageError(url, f"cannot open: {err}") from err
        return "sqlite", conn
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: PLC0415  (only PostgreSQL deployments need the driver loaded)
        except ImportError as err:  # pragma: no cover - psycopg is a dependency
            raise StorageError(url, "the psycopg driver is not installed") from err
        try:
            pg = psycopg.connect(url, connect_timeout=5)
        except psycopg.Error as err:
            raise StorageError(url, f"cannot connect: {str(err).strip().splitlines()[0]}") from err
        return "postgresql", pg
    raise StorageError(url, "unsupported storage URL: use sqlite:///FILE or postgresql://...")
