"""The benchmark's child processes: start them, know when they are ready, read their memory,
stop them.

Each process writes its output to its own log file in the run's folder (a pipe nobody reads
would eventually block it). Memory comes from `/proc/<pid>/status`: `VmHWM` is the peak
resident set over the process's life, `VmRSS` the current one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx


class ProcessFailed(RuntimeError):
    """A child process exited or never became ready; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process in MiB: the peak so far and the current value."""

    peak_mb: float
    current_mb: float


def read_memory(pid: int) -> Memory | None:
    """`VmHWM` and `VmRSS` of `pid`, or None when the process is gone."""
    values: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0]) / 1024  # kB → MiB
    if len(values) < 2:
        return None
    return Memory(peak_mb=values["VmHWM"], current_mb=values["VmRSS"])


@dataclass
class Child:
    """A started child process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str | None = None
    peak_mb: float = 0.0
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        """The port of `url`."""
        assert self.url is not None, f"{self.name} serves no HTTP"
        return int(self.url.rsplit(":", 1)[1])

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _failed(self, why: str) -> ProcessFailed:
        return ProcessFailed(
            f"{self.name} {why}; last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def sample_memory(self) -> Memory | None:
        """Read the memory now, remembering the highest peak seen."""
        memory = read_memory(self.pid)
        if memory is not None:
            self.peak_mb = max(self.peak_mb, memory.peak_mb)
        return memory

    def wait_http(self, path: str = "/healthz", timeout: float = 60.0) -> None:
        """Return once GET `url + path` answers 200; raise if the process dies or times out."""
        assert self.url is not None, f"{self.name} has no URL"
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise self._failed(f"exited with {self.process.returncode}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(path).status_code == 200:
                        return
                time.sleep(0.05)
        raise self._failed(f"did not answer {path} within {timeout:g} s")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        """Return once `text` appears in the process's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._failed(f"exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                if text in self.log_path.read_text(errors="replace"):
                    return
            time.sleep(0.05)
        raise self._failed(f"did not log {text!r} within {timeout:g} s")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL. Samples memory first."""
        if self.process.poll() is None:
            self.sample_memory()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.log is not None:
            self.log.close()


def start(
    name: str, args: list[str], env: dict[str, str], log_dir: Path, url: str | None = None
) -> Child:
    """Start `python -m <args…>` with exactly `env` (plus PATH and the like from ours)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own modules, in our own interpreter
        [sys.executable, "-m", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
    return Child(name=name, process=process, log_path=log_path, url=url, log=log)


def base_env(**values: str) -> dict[str, str]:
    """Our environment without any EDITHOOK_* variable, plus `values`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    return {**base, **values}


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time `pid` has used so far, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def postgres_cpu_seconds() -> float:
    """CPU time used so far by every process named `postgres` on this machine (the server
    and its backends; zero when Postgres runs elsewhere)."""
    return sum(postgres_cpu_by_pid().values())


def postgres_cpu_by_pid() -> dict[int, float]:
    """`postgres_cpu_seconds` per process: backends come and go (other users' connections),
    so a difference over a stretch is taken per pid, a new one counted from nothing."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] == "postgres":
            fields = stat[stat.rindex(")") + 2 :].split()
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return found


def machine_busy_seconds() -> float:
    """CPU time all cores have spent on anything but idling or waiting for I/O."""
    with contextlib.suppress(OSError):
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return (sum(values[:8]) - idle) / _TICKS
    return 0.0


def cpu_snapshot(watch: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each watched process, of Postgres, of this process, and of the
    whole machine; `cpu_cores` turns two of them into cores used."""
    snapshot = {name: cpu_seconds(pid) or 0.0 for name, pid in watch.items()}
    snapshot["postgres"] = postgres_cpu_seconds()
    snapshot["load generator"] = cpu_seconds(os.getpid()) or 0.0
    snapshot["machine"] = machine_busy_seconds()
    return snapshot


def cpu_cores(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Cores used on average between two snapshots `seconds` apart."""
    return {name: (after[name] - before[name]) / seconds for name in before if name in after}
