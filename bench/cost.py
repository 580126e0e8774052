"""What a task costs in CPU: the API and the worker over a task's whole life, and one GET.

A task's life here is the production one: `POST /v1/tasks`, the worker's submit job sending
it to the simulator, the simulator's callback to the API, the worker's copy job downloading
and storing the one result image, the task settled. `--cost-tasks` tasks are created at a
steady `--cost-rate` a second (one at a time, so no batching flatters the figure), and the
phase ends when every one is settled with its image stored and no job of theirs is left.

The figures come from the processes' own counters (user + system CPU of the `serve` and
`worker` pids, as the kernel keeps them), read before and after. What the processes spend
doing nothing — procrastinate's periodic jobs and heartbeat, the LISTEN connections — is
measured right after over the same wall time and subtracted, and the rest divided by the
tasks. One `GET /v1/tasks/{id}` is the API's CPU over sequential GETs of those tasks, less
its idle rate, divided by the GETs. Every figure carries the machine's load average and the
cores it had busy, since the machine is shared; a fixed piece of pure-Python work timed in
the harness before and after (the calibration) says how fast the VM was meanwhile.

Then the same number of tasks again with py-spy sampling the worker and the API: where their
time goes, by activity, function and package (`bench.profile`). That pass is not counted in
the figures (py-spy's sampling takes CPU of its own on the shared cores).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import psycopg

from bench.api_phases import EDIT
from bench.procs import machine_busy_seconds
from bench.profile import PROFILE_RATE_HZ, parse_raw, render_profile
from bench.report import CostFigure, CostRun, Measurements
from bench.stack import POSTER, Stack, bearer

ROLES = ("api", "worker")
# A task is settled when its status is final, no result of it is still to be copied, and no
# job of it is queued or running (the copy job's own finish comes after the results' commit).
SETTLED = """
SELECT
  count(*) FILTER (WHERE t.status IN ('completed', 'failed', 'cancelled')
    AND NOT EXISTS (SELECT 1 FROM task_results r WHERE r.task_id = t.id AND r.status = 'pending')
    AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.args->>'task_id' = t.id::text
                    AND j.status IN ('todo', 'doing'))),
  count(*) FILTER (WHERE t.status = 'completed'
    AND EXISTS (SELECT 1 FROM task_results r WHERE r.task_id = t.id)
    AND NOT EXISTS (SELECT 1 FROM task_results r WHERE r.task_id = t.id AND r.status <> 'stored'))
FROM tasks t WHERE t.id = ANY(%(ids)s::uuid[])
"""


# A fixed piece of pure-Python work (JSON in and out, as the service does much of), timed
# by this process's CPU clock before and after the phase: how fast the VM was meanwhile.
CALIBRATION_ROUNDS = 20_000
CALIBRATION_BODY = {
    "id": "task-unified-1756817821-4x8z2k9p",
    "status": "completed",
    "progress": 100,
    "results": [f"https://files.example.com/out/{index}.png" for index in range(4)],
    "metadata": {"order_id": "bench", "attempt": 1},
}


def calibrate() -> float:
    """CPU milliseconds the calibration work takes here: the least of three tries."""
    tries = []
    for _ in range(3):
        started = time.process_time()
        for _ in range(CALIBRATION_ROUNDS):
            json.loads(json.dumps(CALIBRATION_BODY))
        tries.append((time.process_time() - started) * 1000)
    return min(tries)


@dataclass
class Window:
    """CPU seconds each watched process used over `seconds` of wall time, and the machine's."""

    seconds: float
    cpu: dict[str, float]
    machine: float
    load: tuple[float, float]  # 1-minute load average at the start and at the end
    system: dict[str, float] = field(default_factory=dict)  # of `cpu`, in the kernel

    def figure(self, role: str, idle: Window | None, count: int) -> CostFigure:
        """CPU milliseconds per unit of work: this window's less `idle`'s rate, over `count`."""
        idle_cpu = idle.cpu[role] / idle.seconds * self.seconds if idle and idle.seconds else 0.0
        seconds = self.seconds or math.inf
        return CostFigure(
            ms=(self.cpu[role] - idle_cpu) / count * 1000,
            load=self.load,
            machine_cores=self.machine / seconds,
            postgres_cores=self.cpu["postgres"] / seconds,
            other_cores=(self.machine - sum(self.cpu.values())) / seconds,
        )


@dataclass(frozen=True)
class Reading:
    at: float
    cpu: dict[str, float]
    system: dict[str, float]
    postgres: dict[int, float]  # pid → CPU seconds of every Postgres process on the machine
    machine: float
    load: float


def _postgres() -> dict[int, float]:
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info.get("cpu_times")
        if process.info.get("name") == "postgres" and times is not None:
            found[process.pid] = times.user + times.system
    return found


@dataclass
class Meter:
    """Reads the CPU counters of the watched processes (user + system, all threads)."""

    pids: dict[str, int]
    _processes: dict[str, psutil.Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._processes = {role: psutil.Process(pid) for role, pid in self.pids.items()}

    def _read(self) -> Reading:
        cpu, system = {}, {}
        for role, process in self._processes.items():
            times = process.cpu_times()
            cpu[role] = times.user + times.system
            system[role] = times.system
        return Reading(
            time.monotonic(),
            cpu,
            system,
            _postgres(),
            machine_busy_seconds(),
            os.getloadavg()[0],
        )

    def measure_start(self) -> Reading:
        return self._read()

    def measure_end(self, start: Reading) -> Window:
        end = self._read()
        cpu = {role: end.cpu[role] - start.cpu[role] for role in start.cpu}
        # Backends come and go (other users' tests): count each one alive at the end from
        # where it was at the start, or from nothing; one that exited meanwhile is lost.
        cpu["postgres"] = sum(
            used - start.postgres.get(pid, 0.0) for pid, used in end.postgres.items()
        )
        return Window(
            seconds=end.at - start.at,
            cpu=cpu,
            machine=end.machine - start.machine,
            load=(start.load, end.load),
            system={role: end.system[role] - start.system[role] for role in start.system},
        )


def _create_tasks(stack: Stack, count: int, rate: float, tag: str) -> list[str]:
    """POST `count` tasks, one every 1/`rate` seconds, as the poster client; their ids."""
    ids: list[str] = []
    began = time.monotonic()
    with httpx.Client(base_url=stack.api_url, headers=bearer(POSTER), timeout=30) as api:
        for index in range(count):
            delay = began + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = {**EDIT, "prompt": f"{EDIT['prompt']} (cost {tag} {index})"}
            created = api.post("/v1/tasks", json=body)
            created.raise_for_status()
            ids.append(created.json()["id"])
    return ids


def _wait_settled(url: str, ids: list[str], timeout: float) -> int:
    """Return once every task of `ids` is settled; how many settled with their image stored.

    Polls the database, not the API, so that the waiting costs the measured processes nothing.
    """
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(SETTLED, {"ids": ids}).fetchone()
            settled, stored = (int(row[0]), int(row[1])) if row else (0, 0)
            if settled == len(ids):
                return stored
            if time.monotonic() > deadline:
                raise RuntimeError(f"{settled} of {len(ids)} tasks settled within {timeout:g} s")
            time.sleep(0.05)


def _run_tasks(stack: Stack, count: int, rate: float, tag: str) -> tuple[list[str], int]:
    ids = _create_tasks(stack, count, rate, tag)
    stored = _wait_settled(stack.database_url, ids, timeout=60 + count / rate)
    return ids, stored


def _get_all(stack: Stack, ids: list[str], count: int) -> None:
    """`count` sequential `GET /v1/tasks/{id}`, cycling over `ids`."""
    with httpx.Client(base_url=stack.api_url, headers=bearer(POSTER), timeout=30) as api:
        for index in range(count):
            api.get(f"/v1/tasks/{ids[index % len(ids)]}").raise_for_status()


def run_cost(stack: Stack, m: Measurements, tasks: int, rate: float, gets: int) -> None:
    """Measure the per-task and per-GET figures, then profile; the worker must be running."""
    assert stack.api is not None, "the API is not running"
    assert stack.worker is not None, "the worker is not running"
    assert stack.simulator is not None, "the simulator is not running"
    meter = Meter(
        {
            "api": stack.api.pid,
            "worker": stack.worker.pid,
            "simulator": stack.simulator.pid,
            "harness": os.getpid(),
        }
    )
    # A few tasks first, so that nothing paid once per process (imports, first plans,
    # connections) is counted.
    _run_tasks(stack, min(10, tasks), rate, "warm-up")
    calibration = [calibrate()]

    start = meter.measure_start()
    ids, stored = _run_tasks(stack, tasks, rate, "measured")
    busy = meter.measure_end(start)
    start = meter.measure_start()
    time.sleep(busy.seconds)
    idle = meter.measure_end(start)
    start = meter.measure_start()
    _get_all(stack, ids, gets)
    reads = meter.measure_end(start)
    calibration.append(calibrate())

    run = CostRun(tasks=tasks, stored=stored, rate=rate, gets=gets)
    run.calibration_ms = sum(calibration) / len(calibration)
    run.per_task = {role: busy.figure(role, idle, tasks) for role in ROLES}
    run.per_get = reads.figure("api", idle, gets)
    m.cost = run
    idle_rates = ", ".join(f"{role} {idle.cpu[role] / idle.seconds * 1000:.1f}" for role in ROLES)
    m.notes.append(
        f"cost: the calibration work ({CALIBRATION_ROUNDS:,} JSON round trips in the harness)"
        f" took {calibration[0]:.0f} ms of CPU before the phase and {calibration[1]:.0f} ms after;"
        " per task in its units: "
        + ", ".join(
            f"{role} {run.per_task[role].ms / run.calibration_ms * 1000:.1f}" for role in ROLES
        )
        + f", per GET {run.per_get.ms / run.calibration_ms * 1000:.1f} (thousandths)"
    )
    m.notes.append(
        f"cost: {tasks} tasks created at {rate:g}/s, all settled after {busy.seconds:.1f} s"
        f" ({stored} completed with their image stored); CPU used meanwhile: "
        + ", ".join(
            f"{role} {busy.cpu[role]:.2f} s ({busy.system[role]:.2f} s of it in the kernel)"
            for role in ROLES
        )
        + f"; idle baseline over the next {idle.seconds:.1f} s: {idle_rates} ms of CPU a second;"
        f" {gets} GETs in {reads.seconds:.1f} s used {reads.cpu['api']:.2f} s of API CPU;"
        f" the machine had {busy.machine / busy.seconds:.2f} cores busy during the tasks,"
        f" {idle.machine / idle.seconds:.2f} while idle (in the table, Postgres is every backend"
        " on the machine, other is anything but Postgres, the API, the worker, the simulator"
        " and this harness: the machine's other users)"
    )
    figures = {role: figure.ms for role, figure in run.per_task.items()}
    m.diagnostics += profile_section(stack, tasks, rate, figures)


def profile_section(stack: Stack, tasks: int, rate: float, per_task: dict[str, float]) -> list[str]:
    """py-spy on the worker and the API while `tasks` more tasks live; the markdown."""
    assert stack.api is not None, "the API is not running"
    assert stack.worker is not None, "the worker is not running"
    lines = ["### Where the worker's time goes", ""]
    spy = Path(sys.executable).with_name("py-spy")
    pids = {"worker": stack.worker.pid, "api": stack.api.pid}
    outputs = {role: stack.run_dir / f"profile-{role}.txt" for role in pids}
    spies: dict[str, subprocess.Popen[bytes]] = {}
    logs = {role: stack.run_dir / f"py-spy-{role}.log" for role in pids}
    for role, pid in pids.items():
        # Non-blocking: the process is not paused per sample, and py-spy tells idle threads
        # (a loop in epoll, a pool thread on its queue) by their state; paused, it cannot.
        command = [str(spy), "record", "--pid", str(pid), "--nonblocking", "--nolineno"]
        command += ["--format", "raw"]
        command += ["--rate", str(PROFILE_RATE_HZ), "--output", str(outputs[role])]
        with logs[role].open("wb") as log:
            spies[role] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    time.sleep(1.0)  # py-spy attaches
    _run_tasks(stack, tasks, rate, "profiled")
    for process in spies.values():
        process.send_signal(signal.SIGINT)
    for role, process in spies.items():
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.returncode != 0 or not outputs[role].exists():
            said = logs[role].read_text(errors="replace")[-500:]
            lines += [f"py-spy on the {role} failed ({process.returncode}): {said}", ""]
            continue
        samples = parse_raw(outputs[role].read_text())
        lines += render_profile(role, samples, tasks, per_task[role])
    return lines
