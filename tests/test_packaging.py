"""The installable package carries everything `edithook migrate` needs outside a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_migration_and_the_job_schema(tmp_path: Path) -> None:
    """Every revision file and the pinned procrastinate schema are in the built wheel."""
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
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("edithook-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"migrations/{path.relative_to(ROOT / 'migrations')}"
        for pattern in ("versions/*.py", "sql/*.sql", "env.py", "script.py.mako")
        for path in (ROOT / "migrations").glob(pattern)
    }
    assert expected
    assert expected <= names
    assert "app/py.typed" in names
