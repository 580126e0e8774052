"""The processes a run measures, started the way production starts them.

- `edithook serve` and `edithook worker`, as subprocesses with a development environment
  (loopback URLs), a fixed callback secret and one API key per client;
- the EvoLink simulator (`bench.sim_server`: fast timings, timed creates);
- a caller's webhook receiver (`bench.receiver`: verifies and times every delivery);
- the floor and bound comparison apps (`bench.apps`).

Every process logs into the run's folder; `Stack.stop_all` stops whatever is still running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Child, base_env, free_port, start
from bench.seed import CLIENTS

CALLBACK_SECRET = "bench-callback-secret-0123456789-abcdefghij"  # noqa: S105 - a fixture
EVOLINK_KEY = "sk-bench-simulator"
# Tasks created during the run (submission and completion) belong to this client, so they
# never show up in the listing client's pages.
POSTER = "poster"
API_KEYS = {name: f"{name}-bench-key-0123456789" for name, _ in (*CLIENTS, (POSTER, 0.0))}


# Set, not left to the default (4): the published figures assume 10, the bound's pool, which
# is what the ingest comparison needs (bench/README.md).
DB_POOL_SIZE = 10


def bearer(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEYS[client]}"}


@dataclass
class Stack:
    """The running processes of one benchmark run."""

    database_url: str
    run_dir: Path
    log_level: str = "info"
    pool_size: int = DB_POOL_SIZE
    api: Child | None = None
    worker: Child | None = None
    simulator: Child | None = None
    receiver: Child | None = None
    apps: dict[str, Child] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    _api_port: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._api_port}"

    @property
    def simulator_url(self) -> str:
        assert self.simulator is not None, "the simulator is not running"
        return f"http://127.0.0.1:{self.simulator.port}"

    def service_env(self) -> dict[str, str]:
        """The environment `edithook serve` and `edithook worker` get."""
        return base_env(
            EDITHOOK_ENVIRONMENT="development",
            EDITHOOK_DATABASE_URL=self.database_url,
            EDITHOOK_EVOLINK_BASE_URL=self.simulator_url,
            EDITHOOK_EVOLINK_API_KEY=EVOLINK_KEY,
            EDITHOOK_PUBLIC_BASE_URL=self.api_url,
            EDITHOOK_CALLBACK_SECRET=CALLBACK_SECRET,
            EDITHOOK_API_KEYS=",".join(f"{client}:{key}" for client, key in API_KEYS.items()),
            EDITHOOK_HOST="127.0.0.1",
            EDITHOOK_PORT=str(self._api_port),
            EDITHOOK_STORAGE_URL=str(self.run_dir / "results"),
            EDITHOOK_LOG_LEVEL=self.log_level,
            EDITHOOK_DB_POOL_SIZE=str(self.pool_size),
        )

    def start_simulator(self) -> Child:
        port = free_port()
        self.simulator = start(
            "simulator",
            ["bench.sim_server", "--port", str(port)],
            base_env(),
            self.run_dir,
            url=f"http://127.0.0.1:{port}",
        )
        self.simulator.wait_http("/_sim/stats")
        return self.simulator

    def start_receiver(self) -> Child:
        port = free_port()
        self.receiver = start(
            "receiver",
            ["bench.receiver", "--port", str(port)],
            base_env(),
            self.run_dir,
            url=f"http://127.0.0.1:{port}",
        )
        self.receiver.wait_http("/healthz")
        return self.receiver

    def start_api(self) -> Child:
        self._api_port = free_port()
        self.api = start(
            "api", ["app.cli", "serve"], self.service_env(), self.run_dir, url=self.api_url
        )
        self.api.wait_http("/readyz")
        return self.api

    def start_worker(self) -> Child:
        self.worker = start("worker", ["app.cli", "worker"], self.service_env(), self.run_dir)
        self.worker.wait_log("worker started")
        return self.worker

    def start_app(self, kind: str) -> Child:
        """The floor or bound app, with the same log level and pool size as the API."""
        port = free_port()
        env = base_env(
            BENCH_DATABASE_URL=self.database_url,
            EDITHOOK_CALLBACK_SECRET=CALLBACK_SECRET,
            EDITHOOK_LOG_LEVEL=self.log_level,
            EDITHOOK_DB_POOL_SIZE=str(self.pool_size),
        )
        child = start(
            kind,
            ["bench.apps", kind, "--port", str(port)],
            env,
            self.run_dir,
            url=f"http://127.0.0.1:{port}",
        )
        child.wait_http("/healthz")
        self.apps[kind] = child
        return child

    def stop(self, child: Child | None) -> None:
        """Stop `child`, keeping its peak resident memory under its name."""
        if child is None:
            return
        child.stop()
        self.peaks[child.name] = max(self.peaks.get(child.name, 0.0), child.peak_mb)

    def stop_worker(self) -> None:
        self.stop(self.worker)
        self.worker = None

    def stop_all(self) -> None:
        for child in [*self.apps.values(), self.worker, self.api, self.simulator, self.receiver]:
            self.stop(child)
        self.apps.clear()
        self.worker = self.api = self.simulator = self.receiver = None
