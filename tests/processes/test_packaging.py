"""The installable package carries everything `edithook migrate` needs outside a checkout,
and the production image's package carries nothing of the EvoLink simulator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO


def _build_wheel(source: Path, into: Path) -> set[str]:
    """The file names inside the wheel pip builds from `source`, as the Dockerfile does."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(into),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = into.glob("edithook-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def _dockerfile_sources() -> list[str]:
    """What the build stage copies from the checkout (`COPY src... dest`, not `--from=`)."""
    sources: list[str] = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            sources.extend(words[1:-1])
    return sources


@pytest.fixture(scope="module")
def production_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from exactly what the Dockerfile copies: the image's package."""
    context = tmp_path_factory.mktemp("image-context")
    for name in _dockerfile_sources():
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, context / name)
    out = tmp_path_factory.mktemp("wheel")
    _build_wheel(context, out)
    (wheel,) = out.glob("edithook-*.whl")
    return wheel


def test_the_wheel_ships_every_migration_and_the_job_schema(tmp_path: Path) -> None:
    """Every revision file and the pinned procrastinate schema are in the built wheel."""
    names = _build_wheel(REPO, tmp_path)
    expected = {
        f"migrations/{path.relative_to(REPO / 'migrations')}"
        for pattern in ("versions/*.py", "sql/*.sql", "env.py", "script.py.mako")
        for path in (REPO / "migrations").glob(pattern)
    }
    assert expected
    assert expected <= names
    assert "app/py.typed" in names


def test_the_production_image_package_has_no_simulator(production_wheel: Path) -> None:
    """The image's package is the service and its migrations; no module of the fake provider."""
    names = zipfile.ZipFile(production_wheel).namelist()
    assert "app/main.py" in names
    assert "migrations/env.py" in names
    assert [name for name in names if "simulator" in name] == []


@pytest.mark.parametrize("command", [["simulator", "--port", "0"], ["dev", "--data-dir", "pg"]])
def test_dev_commands_without_the_simulator_exit_with_one_line_naming_the_dev_extra(
    production_wheel: Path, tmp_path: Path, command: list[str]
) -> None:
    """`edithook dev` and `edithook simulator` from the image's package say what to install."""
    site = tmp_path / "site"
    zipfile.ZipFile(production_wheel).extractall(site)
    # `-S`: no .pth files, so the checkout's editable install stays out of sys.path and the
    # only `app` is the image's; the dependencies come from this environment's site-packages.
    paths = dict.fromkeys(
        [str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    result = subprocess.run(
        [sys.executable, "-S", "-m", "app.cli", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "EvoLink simulator" in line
    assert "pip install -e '.[dev]'" in line
    assert not (tmp_path / "pg").exists()
