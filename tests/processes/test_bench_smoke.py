"""`python -m bench --smoke` keeps working: it runs every phase and prints every metric.

Nothing here looks at the numbers; a benchmark's timings are not a test's business.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

# Each metric of the table; listing rows come once per table size.
METRICS = {
    "callback ingest floor throughput": 1,
    "callback ingest floor p50": 1,
    "callback ingest floor p99": 1,
    "callback ingest bound throughput": 1,
    "callback ingest bound p50": 1,
    "callback ingest bound p99": 1,
    "callback ingest edithook throughput": 1,
    "callback ingest edithook p50": 1,
    "callback ingest edithook p99": 1,
    "callback ingest edithook / bound": 1,
    "callback ingest edithook / floor": 1,
    "callback ingest bound / floor": 1,
    "list first page p50 @": 2,
    "list first page p99 @": 2,
    "list deep page p50 @": 2,
    "list deep page p99 @": 2,
    "get task p50 @": 1,
    "get task p99 @": 1,
    "submission POST /v1/tasks p50": 1,
    "submission POST /v1/tasks p99": 1,
    "submission worker job − simulator p50": 1,
    "submission worker job − simulator p99": 1,
    "completion → stored p50": 1,
    "completion → stored p99": 1,
    "completion → image served p50": 1,
    "waiters: completion → last answered": 1,
    "waiters: completion → median answered": 1,
    "waiters: unrelated GET p99 idle": 1,
    "waiters: unrelated GET p99 with waiters": 1,
    "cost per task api CPU": 1,
    "cost per task worker CPU": 1,
    "cost per GET /v1/tasks/{id} api CPU": 1,
    "webhook: completion → received p50": 1,
    "webhook: completion → received p99": 1,
    "webhook: messages a second, one worker": 1,
    "peak RSS api": 1,
    "peak RSS worker": 1,
}


@pytest.mark.timeout(180)
def test_smoke_run_measures_every_metric(tmp_path: Path) -> None:
    """A seconds-long run exits 0 and its table has a measured value for every metric."""
    out = tmp_path / "smoke.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {}
    for line in out.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "metric":
            rows[cells[0]] = cells[1]
    for metric, times in METRICS.items():
        found = [name for name in rows if name == metric or name.startswith(metric + " ")]
        assert len(found) == times, f"{metric!r}: {found}"
        for name in found:
            assert rows[name] not in ("not run", "—"), f"{name} has no value"
            assert name in result.stdout, f"{name} is not in the printed table"
    report = out.read_text()
    phases = next(line for line in report.splitlines() if "submit job phases, p50:" in line)
    assert "nan" not in phases, phases
    trips = report.split("### Round trips on this machine", 1)[1].split("\n\n")[2]
    timed = [line for line in trips.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(timed) == 5, trips  # the header and four exchanges
    for line in timed[1:]:
        assert all(float(cell) > 0 for cell in line.strip("| ").split(" | ")[1:]), line
    profile = report.split("### Where the worker's time goes", 1)[1]
    worker = profile.split("**The worker**", 1)[1].split("**The API", 1)[0]
    shares = [line for line in worker.splitlines() if line.startswith("| ") and "%" in line]
    assert shares, profile  # py-spy sampled the worker and its functions are listed


@pytest.mark.timeout(180)
def test_two_runs_at_once_each_keep_a_database_of_their_own(tmp_path: Path) -> None:
    """Two runs on one Postgres at the same time both finish: neither drops the other's data."""
    command = [sys.executable, "-m", "bench", "--cost-only", "--cost-tasks", "3"]
    command += ["--cost-rate", "20", "--cost-gets", "10", "--db-pool-size", "2"]
    runs = [
        subprocess.Popen(
            [*command, "--out", str(tmp_path / f"cost-{index}.md")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for index in range(2)
    ]
    outputs = [run.communicate(timeout=150)[0].decode(errors="replace") for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
