"""Re-resolve the lock files from pyproject.toml in throwaway virtualenvs.

requirements.lock holds what the service needs at run time (the container image installs
it); requirements-dev.lock adds the dev and test extras. Both are exact `name==version` pins.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The build backend is pinned too, since the project is installed without build isolation.
BUILD = ["setuptools==80.9.0"]


def resolve(extra: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        python = str(Path(tmp) / "bin" / "python")
        target = f"{ROOT}[{extra}]" if extra else str(ROOT)
        subprocess.run([python, "-m", "pip", "install", "-q", target], check=True)
        frozen = subprocess.run(
            [python, "-m", "pip", "freeze", "--exclude-editable", "--exclude", "edithook"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    pins = [line for line in frozen.splitlines() if "==" in line and " @ " not in line]
    return sorted(pins + BUILD, key=str.lower)


def main() -> None:
    header = "# Exact pins, made by `make lock` from pyproject.toml; do not edit by hand.\n"
    (ROOT / "requirements.lock").write_text(header + "\n".join(resolve("")) + "\n")
    (ROOT / "requirements-dev.lock").write_text(header + "\n".join(resolve("test")) + "\n")


if __name__ == "__main__":
    sys.exit(main())
