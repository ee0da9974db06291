"""The package's shape holds what DESIGN.md "Layout" promises: verification stands alone, the wheel is typed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_verification_imports_without_the_web_stack() -> None:
    blocked = ("starlette", "anyio", "sqlite_utils", "uvicorn", "jinja2", "click")
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
        + "from receiver.verify import Verifier, sign\n"
        + "from receiver import VerificationError, sign as again\n"
        + "headers = sign(b'{}', secret='whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')\n"
        + "Verifier(['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw']).verify(b'{}', headers)\n"
        + "print('ok')\n"
    )
    result = run_python(code)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


def test_the_public_names_load_on_first_use() -> None:
    result = run_python(
        "import sys, receiver\n"
        "print('starlette' in sys.modules)\n"
        "receiver.create_app\n"
        "print('starlette' in sys.modules, set(receiver.__all__) <= set(dir(receiver)))"
    )
    assert result.stdout.split("\n") == ["False", "True True", ""]


def test_an_unknown_name_is_an_attribute_error() -> None:
    import receiver

    with pytest.raises(AttributeError, match="module 'receiver' has no attribute 'nope'"):
        receiver.nope  # noqa: B018


def test_the_wheel_ships_py_typed_templates_and_fixtures(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("montra_webhooks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "receiver/py.typed",
        "receiver/inspector/templates/event.html",
        "receiver/inspector/static/inspector.css",
        "replay/_fixtures/subscription.upgraded.json",
    } <= names
