"""Read YAML into plain data while remembering the file and line of every key and list item.

The line map lets a validation error point at `FILE:LINE` instead of a path alone. A mapping
written as `{include: other.yaml}` is replaced by the contents of that file (relative to the
including file), so an enterprise can keep its enrollment in a file of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vpp.errors import ConfigError, Problem

Path_ = tuple[str | int, ...]
MAX_INCLUDE_DEPTH = 8
MAX_FILE_BYTES = 20 * 1024 * 1024


@dataclass(slots=True)
class Source:
    """Data read from a YAML file (and its includes) and where each part of it was written."""

    data: Any
    root_file: str
    lines: dict[Path_, tuple[str, int]] = field(default_factory=dict)

    def locate(self, path: Path_) -> tuple[str, int | None]:
        """File and 1-based line of the longest prefix of `path` that the map knows."""
        for end in range(len(path), -1, -1):
            hit = self.lines.get(path[:end])
            if hit is not None:
                return hit
        return self.root_file, None


def read_text(path: Path) -> str:
    """The file's text, or a ConfigError that says why it cannot be read as a config."""
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(name, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(name, None, "", "is a directory, not a file")]) from None
    except OSError as err:
        raise ConfigError([Problem(name, None, "", f"cannot read: {err.strerror}")]) from err
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([Problem(name, None, "", f"file is larger than {MAX_FILE_BYTES} bytes")])
    if b"\x00" in raw:
        raise ConfigError([Problem(name, None, "", "binary file, not YAML text")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            [Problem(name, None, "", f"not UTF-8 text (byte {err.start} is invalid)")]
        ) from err
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise ConfigError([Problem(name, None, "", "file is empty")])
    return text


def load(path: Path) -> Source:
    """Parse a YAML file with its includes; raise ConfigError with file and line on failure."""
    source = Source(data=None, root_file=str(path))
    source.data = _load_file(path, (), source, depth=0, chain=())
    return source


def _load_file(
    path: Path, prefix: Path_, source: Source, depth: int, chain: tuple[Path, ...]
) -> Any:
    name = str(path)
    text = read_text(path)
    loader: yaml.SafeLoader | yaml.CSafeLoader | None = None
    try:
        # libyaml parses large parks several times faster; its nodes carry the same marks
        loader = yaml.CSafeLoader(text) if yaml.__with_libyaml__ else yaml.SafeLoader(text)
        node = loader.get_single_node()
    except yaml.reader.ReaderError as err:
        position_line = text.count("\n", 0, err.position) + 1
        raise ConfigError(
            [
                Problem(
                    name,
                    position_line,
                    "",
                    f"invalid YAML: character {err.character!r} is not allowed",
                )
            ]
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        mark_line = mark.line + 1 if mark is not None else None
        message = " ".join(p for p in (err.context, err.problem) if p) or "invalid YAML"
        raise ConfigError([Problem(name, mark_line, "", f"invalid YAML: {message}")]) from None
    except yaml.YAMLError as err:
        raise ConfigError([Problem(name, None, "", f"invalid YAML: {err}")]) from None
    except RecursionError:  # the parser recurses per nesting level
        raise ConfigError([Problem(name, None, "", "invalid YAML: nested too deeply")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise ConfigError([Problem(name, None, "", "file is empty")])
    walker = _Walker(path, source, depth, (*chain, path.resolve()))
    source.lines.setdefault(prefix, (name, node.start_mark.line + 1))
    try:
        return walker.convert(node, prefix)
    except RecursionError:
        raise ConfigError([Problem(name, None, "", "YAML nested too deeply")]) from None


class _Walker:
    def __init__(self, path: Path, source: Source, depth: int, chain: tuple[Path, ...]) -> None:
        self.path = path
        self.name = str(path)
        self.source = source
        self.depth = depth
        self.chain = chain
        self.constructor = yaml.SafeLoader("")

    def convert(self, node: yaml.Node, path: Path_) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.source.lines[(*path, index)] = (self.name, item.start_mark.line + 1)
                items.append(self.convert(item, (*path, index)))
            return items
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.constructor.ConstructorError, ValueError, OverflowError) as err:
            # PyYAML raises a plain ValueError for impossible dates such as 2026-13-01
            line = node.start_mark.line + 1
            message = str(getattr(err, "problem", None) or err)
            raise ConfigError([Problem(self.name, line, dotted(path), message)]) from None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> Any:
        self.constructor.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = self.convert(key_node, path)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise ConfigError(
                    [Problem(self.name, line, dotted(path), "mapping keys must be plain scalars")]
                )
            if not isinstance(key, str | int) or isinstance(key, bool):
                key = str(key)
            if key in result:
                raise ConfigError([Problem(self.name, line, dotted((*path, key)), "duplicate key")])
            self.source.lines[(*path, key)] = (self.name, line)
            result[key] = self.convert(value_node, (*path, key))
        if set(result) == {"include"}:
            return self._include(result["include"], path, node.start_mark.line + 1)
        return result

    def _include(self, target: Any, path: Path_, line: int) -> Any:
        where = dotted(path)
        if not isinstance(target, str) or not target:
            raise ConfigError([Problem(self.name, line, where, "include needs a file path")])
        if self.depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError([Problem(self.name, line, where, "includes nested too deeply")])
        included = (self.path.parent / target).resolve()
        if included in self.chain:
            raise ConfigError([Problem(self.name, line, where, f"include cycle through {target}")])
        try:
            shown = included.relative_to(Path.cwd())
        except ValueError:
            shown = included
        return _load_file(Path(shown), path, self.source, self.depth + 1, self.chain)


def dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
