"""`vpp validate` on generated enrollment files: exit 0 or 2 with one-line problems, no traceback.

Inputs are the small test park with one node replaced, removed or added (any YAML value,
including wrong types, huge numbers, NaN, deep nesting and duplicated ids), arbitrary YAML
documents, and raw text that is barely YAML (tags, anchors, tabs, control characters). Each
goes through `vpp.cli.main(["validate", FILE])` in-process; an exception escaping it is the
traceback a user would see. A handful of hostile files also go through a real `vpp`
process to check its stderr.
"""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import MARKETS, ROOT, SMALL_PARK
from vpp.cli import EXIT_BAD_INPUT, main

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
BASE: dict[str, Any] = yaml.safe_load(SMALL_PARK.read_text())

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # NaN and infinities included
    | st.text(max_size=12)
    | st.sampled_from(["24:00", "25:00", "00:00-08:00", "ent-a", "bat-a", "-1", "1e400", ""])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every node of a YAML tree by its path of keys and indices."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*prefix, index))
    return found


BASE_PATHS = paths(BASE)[1:]


def edited(path: tuple[Any, ...], change: Callable[[Any, Any], None]) -> dict[str, Any]:
    tree: dict[str, Any] = yaml.safe_load(SMALL_PARK.read_text())
    parent: Any = tree
    for key in path[:-1]:
        parent = parent[key]
    change(parent, path[-1])
    return tree


def replaced(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    def change(parent: Any, key: Any) -> None:
        parent[key] = value

    return edited(path, change)


def removed(path: tuple[Any, ...]) -> dict[str, Any]:
    def change(parent: Any, key: Any) -> None:
        del parent[key]

    return edited(path, change)


def added(path: tuple[Any, ...], name: str, value: Any) -> dict[str, Any]:
    def change(parent: Any, key: Any) -> None:
        target = parent[key]
        if isinstance(target, dict):
            target[name] = value
        elif isinstance(target, list):
            target.append(value)
        else:
            parent[key] = {name: value}

    return edited(path, change)


mutations = (
    st.tuples(st.sampled_from(BASE_PATHS), values).map(lambda a: replaced(*a))
    | st.sampled_from(BASE_PATHS).map(removed)
    | st.tuples(st.sampled_from(BASE_PATHS), st.text(max_size=8), values).map(lambda a: added(*a))
)
documents = mutations.map(lambda tree: yaml.safe_dump(tree, allow_unicode=True)) | values.map(
    lambda v: yaml.safe_dump(v, allow_unicode=True)
)
raw_texts = st.text(max_size=300) | st.sampled_from(
    [
        "!!python/object/apply:os.system ['true']\n",
        "a: &x [*x]\n",
        "id: small\n\tname: tab\n",
        "id: [\n",
        "id: small\nid: twice\n",
        "- " * 2000 + "x\n",
        "a: " + "[" * 500 + "]" * 500 + "\n",
        "\x00\x01binary",
        "include: /etc/passwd\n",
        "id: small\nname: x\nlocation: {latitude_deg: .nan, longitude_deg: .inf}\n",
        "date: 2026-13-01\n",
        "big: 1" + "0" * 400 + "\n",
    ]
)


def validate(text: str, folder: Path) -> tuple[int, str, str, Path]:
    path = folder / "park.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", str(path), "--markets", str(MARKETS)])
    return code, out.getvalue(), err.getvalue(), path


def check(code: int, out: str, err: str, path: Path) -> None:
    assert code in (0, EXIT_BAD_INPUT), (code, err)
    if code == 0:
        assert ": ok — park" in out and err == ""
        return
    assert err.endswith("\n") and "Traceback" not in err
    # one problem per line (as a terminal shows it), each naming the file at fault
    for line in err.removesuffix("\n").split("\n"):
        assert line.startswith((f"{path}:", f"{MARKETS}/")), line
        assert "\r" not in line


@FUZZ
@given(text=documents)
def test_generated_enrollments_are_accepted_or_refused_with_one_line_problems(
    text: str, tmp_path_factory: Any
) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    check(*validate(text, folder))


@FUZZ
@given(text=raw_texts)
def test_arbitrary_text_is_refused_with_one_line_problems(text: str, tmp_path_factory: Any) -> None:
    folder = tmp_path_factory.mktemp("raw")
    check(*validate(text, folder))


def test_the_unchanged_park_is_valid(tmp_path: Path) -> None:
    code, out, err, _ = validate(SMALL_PARK.read_text(), tmp_path)
    assert (code, err) == (0, "")
    assert "ok" in out


@pytest.mark.slow
def test_hostile_files_through_the_real_command(tmp_path: Path) -> None:
    hostile = {  # (each process imports the whole engine: a few seconds apiece)
        "deep.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "nan.yaml": yaml.safe_dump(replaced(("grid_import_limit_kw",), math.nan)),
    }
    for name, text in hostile.items():
        path = tmp_path / name
        path.write_text(text)
        done = subprocess.run(
            [sys.executable, "-m", "vpp.cli", "validate", str(path), "--markets", str(MARKETS)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == EXIT_BAD_INPUT, (name, done.stderr)
        assert "Traceback" not in done.stderr, name
        assert all(line.startswith(f"{path}:") for line in done.stderr.splitlines()), (
            name,
            done.stderr,
        )
