"""`make bench`: run every benchmark in bench/, then print all their figures together.

A benchmark is a module of this folder (not this one, not a `_helper`) with a `main()` that runs
it, prints its own table and returns its figures as `dict[str, float]`. Each stays runnable alone
(`python bench/ingest.py`). Missing a target is a figure, not a failure: the exit code is 0 unless
a benchmark crashed.

Run `python bench/run.py [NAME]...` to run only some (e.g. `python bench/run.py verify`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_PYTHON = HERE.parent / ".venv" / "bin" / "python"
_NEEDED = ("starlette", "uvicorn", "httpx", "sqlite_utils", "receiver")


def missing_dependencies() -> list[str]:
    """The packages the benchmarks import that this Python cannot find."""
    return [name for name in _NEEDED if importlib.util.find_spec(name) is None]


def ensure_environment(argv: list[str]) -> None:
    """Run under the project's .venv when this Python lacks its packages, or say in one line how to get it."""
    missing = missing_dependencies()
    if not missing:
        return
    if VENV_PYTHON.exists() and Path(sys.executable).absolute() != VENV_PYTHON.absolute():
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(Path(__file__).resolve()), *argv])
    sys.exit(
        f"bench/run.py: this Python ({sys.executable}) lacks {', '.join(missing)}: "
        "run `make bench`, which installs the project into .venv first."
    )


def discover() -> list[str]:
    """The benchmark modules of bench/, by name, in alphabetical order."""
    return [path.stem for path in sorted(HERE.glob("*.py")) if not path.stem.startswith("_") and path.stem != "run"]


def load(name: str) -> Callable[[], dict[str, float]] | None:
    """The module's `main`, or None when it has none (then it is not a benchmark)."""
    main = getattr(importlib.import_module(name), "main", None)
    return main if callable(main) else None


def main(argv: list[str]) -> int:
    ensure_environment(argv)
    # Benchmarks import each other's helpers by module name, and `receiver` from the checkout.
    for folder in (str(HERE), str(HERE.parent)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    names = discover()
    unknown = sorted(set(argv) - set(names))
    if unknown:
        print(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(names)}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, float]] = {}
    crashed: list[str] = []
    for name in argv or names:
        print(f"== bench/{name}.py", flush=True)
        started = time.monotonic()
        try:
            benchmark = load(name)
            if benchmark is None:
                print("   not a benchmark: it has no main()\n")
                continue
            results[name] = benchmark()
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            crashed.append(name)
        print(f"   ({time.monotonic() - started:.0f} s)\n", flush=True)

    print("== figures")
    for name, figures in results.items():
        for key, value in figures.items():
            print(f"  {name}.{key} = {_figure(value)}")
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
