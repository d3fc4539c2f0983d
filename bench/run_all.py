"""Run every benchmark's standard suite; each prints one JSON line per run.

`make bench` calls this. A benchmark is a `bench/<name>.py` script with a `--suite` flag;
`--all` also runs the long ones (the scale-out run takes about 12 minutes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Benchmarks that take many minutes run only with `--all`.
LONG = {"scaleout.py"}


def main() -> int:
    run_long = "--all" in sys.argv[1:]
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in {"run_all.py", "__init__.py"})
    scripts = [p for p in scripts if run_long or p.name not in LONG]
    failed = []
    for script in scripts:
        if "--suite" not in script.read_text(encoding="utf-8"):
            continue  # a helper module, not a benchmark
        print(f"# {script.name}", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, str(script), "--suite"], check=False)
        if result.returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
