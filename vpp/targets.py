"""The park power target in force: scheduled baseline, market awards, DR events, overrides.

The control loop asks `TargetBook.target_at(now, measured_kw)` once per cycle. The target is
the award for the current interval if there is one, else the scheduled baseline, minus the
reduction of every active demand-response event; an operator override beats all of them.
A DR event with no schedule underneath is measured against the park power at its start.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from vpp.domain import Award, DrEvent, Interval

log = logging.getLogger(__name__)


class TargetSource(StrEnum):
    """What set the target in force."""

    SCHEDULE = "schedule"
    AWARD = "award"
    DR_EVENT = "dr_event"
    OVERRIDE = "override"


@dataclass(frozen=True, slots=True)
class Target:
    """The park target at one moment.

    `power_kw` is what the park should draw (positive) or inject; `baseline_kw` what it would
    draw on schedule alone; `deviation_kw = power_kw - baseline_kw` is the part the market or
    the DR programme asked for. `notice_min` is how long before `at` the newest part of that
    deviation was announced (None when there is no deviation): assets that need more notice
    take no part in it.
    """

    at: datetime
    power_kw: float
    baseline_kw: float
    source: TargetSource
    notice_min: float | None = None
    label: str = ""

    @property
    def deviation_kw(self) -> float:
        return self.power_kw - self.baseline_kw


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's target for [start, end), announced at `notified_at`."""

    power_kw: float
    start: datetime
    end: datetime
    notified_at: datetime
    label: str = "override"


@dataclass(frozen=True, slots=True)
class _AwardEntry:
    award: Award
    received_at: datetime


def _aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None:
        raise ValueError(f"TargetBook: {what} must be timezone-aware")


class TargetBook:
    """Every source of the park target, and the target they make at a moment."""

    def __init__(self) -> None:
        self._schedule_starts: list[datetime] = []
        self._schedule: list[tuple[Interval, float]] = []
        self._awards: dict[datetime, _AwardEntry] = {}
        self._events: dict[str, DrEvent] = {}
        self._override: Override | None = None
        # Park power measured when a deviation without schedule began, by deviation key.
        self._references: dict[str, float] = {}
        self._listeners: list[Callable[[], None]] = []
        self._version = 0

    @property
    def version(self) -> int:
        """Increases with every change of any input."""
        return self._version

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change (the control loop runs a cycle at once)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._version += 1
        for listener in self._listeners:
            listener()

    # --- inputs ------------------------------------------------------------------------------

    def set_schedule(self, start: datetime, interval: timedelta, power_kw: Sequence[float]) -> None:
        """Replace the baseline from `start` on by one value per interval."""
        _aware(start, "schedule start")
        if interval <= timedelta(0):
            raise ValueError("TargetBook: schedule interval must be positive")
        bad = [p for p in power_kw if not math.isfinite(p)]
        if bad:
            raise ValueError(f"TargetBook: schedule has non-finite power {bad[0]}")
        end = start + interval * len(power_kw)
        kept = [(iv, p) for iv, p in self._schedule if iv.end <= start or iv.start >= end]
        kept.extend((Interval(start + interval * k, interval), p) for k, p in enumerate(power_kw))
        kept.sort(key=lambda entry: entry[0].start)
        self._schedule = kept
        self._schedule_starts = [iv.start for iv, _ in kept]
        self._changed()

    def add_award(self, award: Award, received_at: datetime) -> None:
        """Commit the park to `award.power_kw` over its interval (a later award replaces it)."""
        _aware(received_at, "award received_at")
        if not math.isfinite(award.power_kw):
            raise ValueError(f"TargetBook: award for {award.interval.start} has no finite power")
        self._awards[award.interval.start] = _AwardEntry(award, received_at)
        self._changed()

    def add_event(self, event: DrEvent) -> None:
        """Add or update a demand-response event (same `event_id` replaces)."""
        _aware(event.start, f"event {event.event_id} start")
        if event.end <= event.start:
            raise ValueError(f"TargetBook: event {event.event_id} ends before it starts")
        self._events[event.event_id] = event
        self._changed()

    def cancel_event(self, event_id: str) -> bool:
        """Drop an event; True if it was known."""
        removed = self._events.pop(event_id, None) is not None
        self._references.pop(f"event:{event_id}", None)
        if removed:
            self._changed()
        return removed

    def set_override(
        self,
        power_kw: float,
        start: datetime,
        end: datetime,
        notified_at: datetime | None = None,
        label: str = "override",
    ) -> None:
        """Make the park follow `power_kw` over [start, end), whatever else is in force."""
        _aware(start, "override start")
        if not math.isfinite(power_kw):
            raise ValueError(f"TargetBook: override power {power_kw} is not finite")
        if end <= start:
            raise ValueError("TargetBook: override ends before it starts")
        self._override = Override(power_kw, start, end, notified_at or start, label)
        self._references.pop("override", None)
        self._changed()

    def clear_override(self) -> None:
        if self._override is not None:
            self._override = None
            self._references.pop("override", None)
            self._changed()

    def prune(self, before: datetime) -> None:
        """Forget everything that ended before `before`."""
        self._schedule = [(iv, p) for iv, p in self._schedule if iv.end > before]
        self._schedule_starts = [iv.start for iv, _ in self._schedule]
        self._awards = {k: a for k, a in self._awards.items() if a.award.interval.end > before}
        for event_id in [k for k, e in self._events.items() if e.end <= before]:
            self.cancel_event(event_id)
        if self._override is not None and self._override.end <= before:
            self.clear_override()

    # --- queries -----------------------------------------------------------------------------

    def scheduled_at(self, now: datetime) -> float | None:
        """The baseline schedule's power at `now`, if any."""
        i = bisect.bisect_right(self._schedule_starts, now) - 1
        if i >= 0:
            interval, power = self._schedule[i]
            if interval.contains(now):
                return power
        return None

    def award_at(self, now: datetime) -> Award | None:
        for entry in self._awards.values():
            if entry.award.interval.contains(now):
                return entry.award
        return None

    def active_events(self, now: datetime) -> list[DrEvent]:
        return [e for e in self._events.values() if e.active(now)]

    def target_at(self, now: datetime, measured_kw: float | None = None) -> Target | None:
        """The target in force at `now`; None when nothing asks anything of the park.

        `measured_kw` is the park's measured power: a DR event or override with no schedule
        underneath keeps the value of its first cycle as its baseline.
        """
        scheduled = self.scheduled_at(now)
        award_entry = next(
            (a for a in self._awards.values() if a.award.interval.contains(now)), None
        )
        events = self.active_events(now)
        override = self._override
        if override is not None and not (override.start <= now < override.end):
            override = None

        announced: list[datetime] = []
        if override is not None:
            baseline = (
                scheduled if scheduled is not None else self._reference("override", measured_kw)
            )
            if baseline is None:
                baseline = override.power_kw
            announced.append(override.notified_at)
            return Target(
                now,
                override.power_kw,
                baseline,
                TargetSource.OVERRIDE,
                _notice_min(now, announced),
                override.label,
            )

        core: float | None = scheduled
        source = TargetSource.SCHEDULE
        label = ""
        if award_entry is not None:
            core = award_entry.award.power_kw
            source = TargetSource.AWARD
            label = award_entry.award.market
            announced.append(award_entry.received_at)
        baseline = scheduled
        if events:
            if baseline is None:
                first = min(events, key=lambda e: (e.start, e.event_id))
                baseline = self._reference(f"event:{first.event_id}", measured_kw)
            if core is None:
                core = baseline
            source = TargetSource.DR_EVENT
            label = ",".join(sorted(e.event_id for e in events))
            announced.extend(e.notified_at for e in events)
        if core is None:
            return None
        power = core - sum(e.reduction_kw for e in events)
        if baseline is None:
            baseline = core
        notice = _notice_min(now, announced) if power != baseline else None
        return Target(now, power, baseline, source, notice, label)

    def _reference(self, key: str, measured_kw: float | None) -> float | None:
        if key not in self._references:
            if measured_kw is None or not math.isfinite(measured_kw):
                return None
            self._references[key] = measured_kw
            log.info("target baseline for %s frozen at %.1f kW", key, measured_kw)
        return self._references[key]


def _notice_min(now: datetime, announced: list[datetime]) -> float | None:
    if not announced:
        return None
    return (now - max(announced)).total_seconds() / 60.0
