"""The project's error types: one root and a few subclasses that carry their context."""

from __future__ import annotations

from dataclasses import dataclass


class VPPError(Exception):
    """Root of every error the engine raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input file, located as precisely as we can."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        field = f" {self.field}:" if self.field else ""
        # one problem, one line: a key or value quoted from the file may hold line breaks
        text = f"{where}:{field} {self.message}"
        return text.replace("\r", "\\r").replace("\n", "\\n")


class ConfigError(VPPError):
    """A configuration file (enrollment, market rules, prices) is invalid; `problems` lists why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class AdapterError(VPPError):
    """A device adapter failed to talk to its peer; `adapter` names which one."""

    def __init__(self, adapter: str, message: str) -> None:
        self.adapter = adapter
        super().__init__(f"{adapter}: {message}")


class PayloadError(VPPError):
    """A telemetry or ack payload was rejected; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)
