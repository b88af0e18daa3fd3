"""Installing xrisk keeps the torch a user already has (a CUDA build stays a CUDA build).

The README's install block (between ``<!-- install -->`` and ``<!-- /install -->``) is run as
written in a throw-away virtual environment that holds a stand-in for a CUDA torch
(``torch 2.5.1+cu121``, an empty wheel made here) while the only index offers ``torch 2.13.0``:
after the install the stand-in must still be there. Everything is offline: pip runs
``--isolated --no-index`` on wheels built in the test (xrisk's own wheel from the source tree).
The counter-case shows why: the same install with this repository's ``constraints.txt`` (the pin
of the repo's own ``.venv``) replaces the user's torch.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from _examples import marked_code

ROOT = Path(__file__).resolve().parents[1]
CUDA_TORCH = "2.5.1+cu121"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def fake_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """An installable pure-Python wheel ``name==version`` whose package only records its version."""
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n".encode()}
    info = f"{name}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    files[f"{info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: xrisk-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [_record_line(k, v) for k, v in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This interpreter's pip acting on ``python``'s environment, offline and ignoring pip config."""
    return subprocess.run([sys.executable, "-m", "pip", "--isolated", "--python", str(python), *args],
                          capture_output=True, text=True, timeout=300)


def _installed(python: Path, name: str) -> str:
    out = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """xrisk's wheel (built offline from a copy of the source tree) and stand-ins for torch and numpy."""
    pytest.importorskip("setuptools", reason="building xrisk's wheel offline needs setuptools")
    folder = tmp_path_factory.mktemp("wheels")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = subprocess.run([sys.executable, "-m", "pip", "--isolated", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(folder), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    fake_wheel(folder, "torch", "2.13.0")  # what an index would offer as the newest torch
    fake_wheel(folder, "numpy", "2.4.6")
    return folder


@pytest.fixture
def cuda_env(tmp_path, wheels) -> Path:
    """A fresh environment whose torch is a (stand-in) CUDA build."""
    venv.create(tmp_path / "env", with_pip=False)
    python = tmp_path / "env" / "bin" / "python"
    cuda = fake_wheel(tmp_path, "torch", CUDA_TORCH)
    out = _pip(python, "install", "-q", "--no-index", "--no-deps", str(cuda), str(wheels / "numpy-2.4.6-py3-none-any.whl"))
    assert out.returncode == 0, out.stderr
    assert _installed(python, "torch") == CUDA_TORCH
    return python


def _readme_install_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = marked_code(text, "install", languages=("bash", "sh"))
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    commands = [c for c in commands if c]
    assert commands and all(c[:2] == ["pip", "install"] for c in commands), commands
    return commands


def _as_offline(command: list[str], wheels: Path) -> list[str]:
    """``pip install ARGS`` of the README with the source tree (``.``) replaced by xrisk's built wheel."""
    wheel = next(wheels.glob("xrisk-*.whl"))
    args = []
    for arg in command[2:]:
        m = re.fullmatch(r"\.(\[[\w,-]+\])?", arg)
        args.append(f"xrisk{m[1] or ''} @ {wheel.as_uri()}" if m else arg)
    return ["install", "-q", "--no-index", "--find-links", str(wheels), *args]


def test_readme_install_keeps_an_existing_cuda_torch(cuda_env, wheels):
    for command in _readme_install_commands():
        out = _pip(cuda_env, *_as_offline(command, wheels))
        assert out.returncode == 0, out.stderr
    assert _installed(cuda_env, "xrisk") == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _installed(cuda_env, "torch") == CUDA_TORCH


def test_the_repos_constraints_file_would_replace_it(cuda_env, wheels):
    """Why the README does not tell users to install with ``-c constraints.txt``."""
    out = _pip(cuda_env, *_as_offline(["pip", "install", "."], wheels), "-c", str(ROOT / "constraints.txt"))
    assert out.returncode == 0, out.stderr
    assert _installed(cuda_env, "torch") == "2.13.0"


def test_no_requirement_of_the_package_pins_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values()
                                                   for r in extra]
    torch_reqs = [r for r in requirements if re.match(r"torch\b(?![-\w])", r)]
    assert torch_reqs == ["torch>=2.3"], torch_reqs
