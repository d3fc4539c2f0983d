"""The coordinator: splits the park target over the shards by the headroom each reports.

Shards (`vpp.shard`) report every period their measured power and the range they can reach
from their measured state. Each period the coordinator takes the park target in force from
its `TargetBook` (awards, schedule, DR events, an operator override or a stepped test
program), splits it over the live shards (`split_target`) and sends each its `Share`, valid
for a few periods so that a shard left alone lets its assets go. Shares are kept while the
target holds, so that every shard's own loop can settle on a steady value; they are split
afresh from measured power when the target or the set of live shards changes, and a shard
that can no longer reach its share has the rest moved to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vpp.clock import Clock, SystemClock
from vpp.errors import ConfigError, Problem
from vpp.shard import (
    REPORT,
    SHARDS_NODE,
    Link,
    LinkSettings,
    ShardReport,
    Share,
    coordinator_alive_topic,
    park_topic,
    report_topic,
    share_topic,
)
from vpp.targets import TargetBook

log = logging.getLogger(__name__)

_TOLERANCE_KW = 1e-6


# --- the split ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """Shares of one target (kW per shard); `saturated` when the shards cannot reach it."""

    shares_kw: Mapping[str, float]
    saturated: bool
    resplit: bool

    @property
    def total_kw(self) -> float:
        return sum(self.shares_kw.values())


def split_target(
    target_kw: float,
    reports: Mapping[str, ShardReport],
    previous: Mapping[str, float] | None = None,
) -> Split:
    """Split `target_kw` over the shards of `reports` in proportion to their headroom.

    Each shard starts from a base: its previous share kept inside its reachable range, or,
    when there is no previous split for exactly these shards, its measured power. The gap
    between the target and the sum of the bases goes to the shards in proportion to their
    room in the direction of the gap (up: `high - base`, down: `base - low`), so every share
    stays in its shard's range and the shares add up to the target whenever the shards
    together can reach it; when they cannot, every shard is sent to the bound on that side.
    """
    if not math.isfinite(target_kw):
        raise ValueError(f"split_target: target {target_kw} is not finite")
    if not reports:
        return Split({}, saturated=True, resplit=True)
    resplit = previous is None or set(previous) != set(reports)
    base: dict[str, float] = {}
    for shard, report in reports.items():
        low = min(report.low_kw, report.measured_kw)
        high = max(report.high_kw, report.measured_kw)
        start = report.measured_kw if resplit or previous is None else previous[shard]
        base[shard] = min(max(start, low), high)
    gap = target_kw - sum(base.values())
    if abs(gap) <= _TOLERANCE_KW:
        return Split(base, saturated=False, resplit=resplit)
    room = {
        shard: max(
            (max(r.high_kw, r.measured_kw) - base[shard])
            if gap > 0
            else (base[shard] - min(r.low_kw, r.measured_kw)),
            0.0,
        )
        for shard, r in reports.items()
    }
    total = sum(room.values())
    if total <= abs(gap) + _TOLERANCE_KW:
        shares = {shard: base[shard] + math.copysign(room[shard], gap) for shard in reports}
        return Split(shares, saturated=total < abs(gap) - _TOLERANCE_KW, resplit=resplit)
    shares = {shard: base[shard] + gap * room[shard] / total for shard in reports}
    return Split(shares, saturated=False, resplit=resplit)


# --- a stepped target, for tests and benchmarks ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """From `at_s` after the program starts the park target is `power_kw` (or base + it)."""

    at_s: float
    power_kw: float
    label: str = ""


@dataclass(frozen=True, slots=True)
class StepProgram:
    """A stepped park target; `relative` steps are offsets from the park power at the start.

    The program starts when every expected shard reports fresh telemetry for at least
    `ready_fraction` of its assets (or after `wait_s`), and ends `hold_s` after its last step.
    """

    steps: tuple[Step, ...]
    relative: bool = True
    hold_s: float = 20.0
    wait_s: float = 120.0
    ready_fraction: float = 0.99

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("StepProgram: no steps")
        times = [s.at_s for s in self.steps]
        if times != sorted(times) or times[0] < 0:
            raise ValueError("StepProgram: steps must start at 0 s or later, in time order")

    @property
    def length_s(self) -> float:
        return self.steps[-1].at_s + self.hold_s

    @classmethod
    def parse(cls, text: str, *, relative: bool = True, hold_s: float = 20.0) -> StepProgram:
        """`AT:KW,AT:KW,...`, e.g. `0:0,20:+5000,40:-5000` (seconds, kW)."""
        steps = []
        for k, item in enumerate(p for p in text.split(",") if p.strip()):
            at, sep, power = item.partition(":")
            try:
                if not sep:
                    raise ValueError(item)
                steps.append(Step(float(at), float(power), f"step {k}"))
            except ValueError:
                raise ConfigError(
                    [Problem("--steps", None, f"[{k}]", f"'{item}' is not AT_S:KW")]
                ) from None
        try:
            return cls(tuple(steps), relative=relative, hold_s=hold_s)
        except ValueError as err:
            raise ConfigError([Problem("--steps", None, "", str(err))]) from None


@dataclass(frozen=True, slots=True)
class StepResult:
    """How the park followed one step: error at the step's end and time to settle (kW, s).

    `end_error_kw` is the mean |target - measured| over the last `tail` samples of the step;
    `settle_s` is the time from the step until the error stays within `band_kw` for the rest
    of the step (None when it never does).
    """

    label: str
    at_s: float
    target_kw: float
    step_kw: float
    end_error_kw: float
    end_error_fraction: float | None  # of |step_kw|
    band_kw: float
    settle_s: float | None
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return {
            name: round(v, 3) if isinstance(v, float) else v
            for name in self.__dataclass_fields__
            for v in (getattr(self, name),)
        }


@dataclass(frozen=True, slots=True)
class ParkSample:
    """The park as the coordinator saw it at one tick."""

    at: datetime
    elapsed_s: float  # since the program started (negative before)
    target_kw: float | None
    measured_kw: float
    low_kw: float
    high_kw: float
    shares_kw: Mapping[str, float]
    measured_by_shard_kw: Mapping[str, float]
    saturated: bool

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "at": round(self.at.timestamp(), 3),
                "target_kw": None if self.target_kw is None else round(self.target_kw, 3),
                "measured_kw": round(self.measured_kw, 3),
                "low_kw": round(self.low_kw, 3),
                "high_kw": round(self.high_kw, 3),
                "saturated": self.saturated,
                "shares_kw": {k: round(v, 3) for k, v in self.shares_kw.items()},
            },
            separators=(",", ":"),
        ).encode()


def evaluate_steps(
    timeline: Sequence[ParkSample],
    program: StepProgram,
    *,
    band_fraction: float = 0.05,
    band_floor_kw: float = 0.0,
    tail: int = 3,
) -> list[StepResult]:
    """Tracking of every step of `program` over the coordinator's `timeline`."""
    results = []
    steps = program.steps
    previous_target: float | None = None
    for k, step in enumerate(steps):
        end = steps[k + 1].at_s if k + 1 < len(steps) else program.length_s
        window = [s for s in timeline if step.at_s <= s.elapsed_s < end and s.target_kw is not None]
        if not window:
            continue
        target = window[-1].target_kw
        assert target is not None
        step_kw = 0.0 if previous_target is None else target - previous_target
        previous_target = target
        errors = [abs((s.target_kw or 0.0) - s.measured_kw) for s in window]
        end_error = sum(errors[-tail:]) / len(errors[-tail:])
        band = max(band_fraction * abs(step_kw), band_floor_kw)
        settle: float | None = None
        for i in range(len(window)):
            if all(e <= band for e in errors[i:]):
                settle = window[i].elapsed_s - step.at_s
                break
        results.append(
            StepResult(
                label=step.label,
                at_s=step.at_s,
                target_kw=target,
                step_kw=step_kw,
                end_error_kw=end_error,
                end_error_fraction=end_error / abs(step_kw) if abs(step_kw) > 1e-9 else None,
                band_kw=band,
                settle_s=settle,
                samples=len(window),
            )
        )
    return results


# --- the coordinator process -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoordinatorOptions:
    """Timing of the coordinator (seconds of clock time) and the shards it waits for."""

    period_s: float = 2.0
    share_validity_s: float = 6.0  # a shard with no newer share lets its assets go after this
    stale_after_s: float = 6.0  # a shard silent this long is left out of the split
    shards: tuple[str, ...] = ()  # expected shards (empty: whoever reports)
    target_tolerance_kw: float = 1.0  # a target change beyond this re-splits from measurements

    def __post_init__(self) -> None:
        if self.period_s <= 0 or self.share_validity_s <= self.period_s:
            raise ValueError("CoordinatorOptions: shares must outlive one period")


@dataclass(frozen=True, slots=True)
class CoordinatorSummary:
    """What the coordinator did; `steps` is filled when it ran a `StepProgram`."""

    shards: tuple[str, ...]
    wall_s: float
    ticks: int
    reports_received: Mapping[str, int]
    shares_sent: Mapping[str, int]
    saturated_ticks: int
    overlaps: tuple[str, ...]
    steps: tuple[StepResult, ...]
    base_kw: float | None
    cpu_s: float
    timeline: tuple[ParkSample, ...] = field(repr=False, default=())

    def as_dict(self, with_timeline: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "shards": list(self.shards),
            "wall_s": round(self.wall_s, 2),
            "ticks": self.ticks,
            "reports_received": dict(self.reports_received),
            "shares_sent": dict(self.shares_sent),
            "saturated_ticks": self.saturated_ticks,
            "overlaps": list(self.overlaps),
            "base_kw": None if self.base_kw is None else round(self.base_kw, 1),
            "cpu_s": round(self.cpu_s, 2),
            "steps": [s.as_dict() for s in self.steps],
        }
        if with_timeline:
            out["timeline"] = [
                {
                    "t": round(s.elapsed_s, 2),
                    "target_kw": None if s.target_kw is None else round(s.target_kw, 1),
                    "measured_kw": round(s.measured_kw, 1),
                    "shares_kw": {k: round(v, 1) for k, v in s.shares_kw.items()},
                    "by_shard_kw": {k: round(v, 1) for k, v in s.measured_by_shard_kw.items()},
                }
                for s in self.timeline
            ]
        return out


@dataclass(frozen=True, slots=True)
class _Received:
    report: ShardReport
    received_at: datetime


class Coordinator:
    """Collects shard reports, splits the park target, sends the shares; `run` until done."""

    def __init__(
        self,
        link: LinkSettings,
        *,
        clock: Clock | None = None,
        targets: TargetBook | None = None,
        options: CoordinatorOptions | None = None,
        client_id: str = "vpp-coordinator",
    ) -> None:
        self.settings = link
        self.clock = clock if clock is not None else SystemClock()
        self.targets = targets if targets is not None else TargetBook()
        self.options = options if options is not None else CoordinatorOptions()
        prefix = link.prefix
        self.link = Link(
            link,
            client_id,
            coordinator_alive_topic(prefix),
            [report_topic(prefix, "+")],
            self._on_message,
        )
        self.reports: dict[str, _Received] = {}
        self.reports_received: Counter[str] = Counter()
        self.shares_sent: Counter[str] = Counter()
        self.timeline: list[ParkSample] = []
        self.overlaps: set[str] = set()
        self.saturated_ticks = 0
        self.started_at: datetime | None = None  # when the step program started
        self.base_kw: float | None = None
        self._shares: dict[str, float] | None = None
        self._split_target: float | None = None
        self._announced_at: datetime | None = None
        self._seq = 0
        self._stop = asyncio.Event()
        self._reported = asyncio.Event()
        self._report_depth = prefix.count("/") + 4  # <prefix>/_shards/<shard>/report

    # --- incoming ------------------------------------------------------------------------------

    def _on_message(self, name: str, raw: bytes) -> None:
        parts = name.split("/")
        if len(parts) != self._report_depth or parts[-1] != REPORT or parts[-3] != SHARDS_NODE:
            return
        report = ShardReport.decode(raw)
        if report.shard_id != parts[-2]:
            log.warning("coordinator: report of %r on %s ignored", report.shard_id, name)
            return
        expected = self.options.shards
        if expected and report.shard_id not in expected:
            return
        known = self.reports.get(report.shard_id)
        if known is not None and report.seq <= known.report.seq and report.at <= known.report.at:
            return  # out of order
        self.reports[report.shard_id] = _Received(report, self.clock.now())
        self.reports_received[report.shard_id] += 1
        self._reported.set()

    def live(self, now: datetime) -> dict[str, ShardReport]:
        """The latest report of every shard heard from within `stale_after_s`."""
        limit = timedelta(seconds=self.options.stale_after_s)
        return {
            shard: r.report for shard, r in self.reports.items() if now - r.received_at <= limit
        }

    def ready(self, fraction: float = 0.99) -> bool:
        """Every expected shard (at least one) reports fresh telemetry for `fraction` of its assets."""
        now = self.clock.now()
        live = self.live(now)
        expected = self.options.shards or tuple(live)
        if not expected:
            return False
        return all(
            s in live and live[s].assets > 0 and live[s].fresh >= fraction * live[s].assets
            for s in expected
        )

    # --- one tick ------------------------------------------------------------------------------

    def tick(self, now: datetime) -> tuple[ParkSample, list[Share]]:
        """Split the target in force over the live shards; the shares to send now."""
        live = self.live(now)
        measured = sum(r.measured_kw for r in live.values())
        self._check_overlaps(live)
        target = self.targets.target_at(now, measured)
        shares: list[Share] = []
        split_kw: dict[str, float] = {}
        saturated = False
        if target is not None and live:
            changed = (
                self._split_target is None
                or abs(target.power_kw - self._split_target) > self.options.target_tolerance_kw
            )
            if changed or self._announced_at is None:
                self._announced_at = now
            previous = None if changed else self._shares
            split = split_target(target.power_kw, live, previous)
            self._shares = dict(split.shares_kw)
            self._split_target = target.power_kw
            split_kw = dict(split.shares_kw)
            saturated = split.saturated
            self._seq += 1
            valid_until = now + timedelta(seconds=self.options.share_validity_s)
            for shard, power in split.shares_kw.items():
                shares.append(
                    Share(
                        shard_id=shard,
                        seq=self._seq,
                        at=now,
                        power_kw=power,
                        valid_until=valid_until,
                        park_target_kw=target.power_kw,
                        announced_at=self._announced_at,
                        label=target.label,
                    )
                )
        elif target is None:
            self._shares = None
            self._split_target = None
        if saturated:
            self.saturated_ticks += 1
        elapsed = (now - self.started_at).total_seconds() if self.started_at is not None else -1.0
        sample = ParkSample(
            at=now,
            elapsed_s=elapsed,
            target_kw=None if target is None else target.power_kw,
            measured_kw=measured,
            low_kw=sum(r.low_kw for r in live.values()),
            high_kw=sum(r.high_kw for r in live.values()),
            shares_kw=split_kw,
            measured_by_shard_kw={s: r.measured_kw for s, r in live.items()},
            saturated=saturated,
        )
        self.timeline.append(sample)
        return sample, shares

    def _check_overlaps(self, live: Mapping[str, ShardReport]) -> None:
        """Shared subscriptions must keep each device with one shard: say when they do not."""
        seen: dict[str, str] = {}
        for shard, report in sorted(live.items()):
            for enterprise in report.enterprises or ():
                other = seen.setdefault(enterprise, shard)
                if other != shard and enterprise not in self.overlaps:
                    self.overlaps.add(enterprise)
                    log.warning(
                        "coordinator: enterprise %s has fresh telemetry in shards %s and %s: "
                        "the broker does not keep shared subscriptions sticky; "
                        "use a static map or a topic-hash shared subscription strategy",
                        enterprise,
                        other,
                        shard,
                    )

    # --- the loops -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(
        self, duration_s: float | None = None, program: StepProgram | None = None
    ) -> CoordinatorSummary:
        """Coordinate until stopped, `duration_s` passed, or `program` ended."""
        wall = time.monotonic()
        cpu = time.process_time()
        async with asyncio.TaskGroup() as group:
            others = [
                group.create_task(self.link.run(), name="coordinator-link"),
                group.create_task(self._loop(), name="coordinator-tick"),
            ]
            if program is not None:
                others.append(group.create_task(self._program(program), name="step-program"))
            try:
                await self._until(duration_s)
            finally:
                for task in others:
                    task.cancel()
        steps = (
            tuple(
                evaluate_steps(
                    [s for s in self.timeline if s.elapsed_s >= 0],
                    program,
                )
            )
            if program is not None
            else ()
        )
        return CoordinatorSummary(
            shards=tuple(sorted(self.reports_received)),
            wall_s=time.monotonic() - wall,
            ticks=len(self.timeline),
            reports_received=dict(self.reports_received),
            shares_sent=dict(self.shares_sent),
            saturated_ticks=self.saturated_ticks,
            overlaps=tuple(sorted(self.overlaps)),
            steps=steps,
            base_kw=self.base_kw,
            cpu_s=time.process_time() - cpu,
            timeline=tuple(self.timeline),
        )

    async def _until(self, duration_s: float | None) -> None:
        if duration_s is None:
            await self._stop.wait()
            return
        waiter = asyncio.ensure_future(self._stop.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep(duration_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)

    async def _loop(self) -> None:
        period = self.options.period_s
        prefix = self.settings.prefix
        while True:
            started = self.clock.now()
            sample, shares = self.tick(started)
            for share in shares:
                if await self.link.publish(share_topic(prefix, share.shard_id), share.encode()):
                    self.shares_sent[share.shard_id] += 1
            await self.link.publish(park_topic(prefix), sample.encode(), qos=0)
            spent = (self.clock.now() - started).total_seconds()
            await self.clock.sleep(max(period - spent, 0.0))

    async def _program(self, program: StepProgram) -> None:
        deadline = time.monotonic() + program.wait_s
        while not self.ready(program.ready_fraction):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._reported.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._reported.wait()
        if not self.ready(program.ready_fraction):
            log.warning("coordinator: not every shard is ready; starting the program anyway")
        start = self.clock.now()
        self.base_kw = sum(r.measured_kw for r in self.live(start).values())
        self.started_at = start
        for step in program.steps:
            wait_s = (start + timedelta(seconds=step.at_s) - self.clock.now()).total_seconds()
            if wait_s > 0:
                await self.clock.sleep(wait_s)
            now = self.clock.now()
            power = self.base_kw + step.power_kw if program.relative else step.power_kw
            self.targets.set_override(
                power,
                now,
                start + timedelta(seconds=program.length_s + 3600.0),
                notified_at=now,
                label=step.label,
            )
            # a new target is split at once rather than at the next tick
            await self._send_now()
        remaining = (start + timedelta(seconds=program.length_s) - self.clock.now()).total_seconds()
        if remaining > 0:
            await self.clock.sleep(remaining)
        self.stop()

    async def _send_now(self) -> None:
        prefix = self.settings.prefix
        _sample, shares = self.tick(self.clock.now())
        for share in shares:
            if await self.link.publish(share_topic(prefix, share.shard_id), share.encode()):
                self.shares_sent[share.shard_id] += 1
