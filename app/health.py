"""`edithook healthcheck`: the container's health check, for either role of the image.

The API is healthy while it answers `GET /healthz` on its own port. The worker serves no
HTTP: it is healthy while its heartbeat file is fresh, which it renews only while
procrastinate's worker runs (see app.worker). Without a role the check looks for the
heartbeat: a container whose process wrote one runs a worker.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request

from app.heartbeat import HEARTBEAT_STALE_SECONDS, heartbeat_path

HTTP_TIMEOUT_SECONDS = 2.0


def healthcheck(role: str | None) -> int:
    """Exit status 0 when healthy; else 1, with one line on stderr saying why."""
    if role is None:
        role = "worker" if heartbeat_path().exists() else "api"
    problem = _worker_problem() if role == "worker" else _api_problem()
    if problem is None:
        return 0
    print(f"edithook healthcheck is unhealthy: {problem}", file=sys.stderr)
    return 1


def _worker_problem() -> str | None:
    path = heartbeat_path()
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return (
            f"no worker heartbeat at {path}; `edithook worker` is not running here, or its "
            "jobs have not run yet (see its log)"
        )
    if age > HEARTBEAT_STALE_SECONDS:
        return (
            f"the worker heartbeat {path} is {age:.0f} s old (stale after "
            f"{HEARTBEAT_STALE_SECONDS:.0f} s); its jobs are not running (see its log)"
        )
    return None


def _api_problem() -> str | None:
    host = os.environ.get("EDITHOOK_HOST", "127.0.0.1")
    # A wildcard address is reached on loopback.
    if host in ("", "0.0.0.0", "::"):  # noqa: S104
        host = "127.0.0.1"
    port = os.environ.get("EDITHOOK_PORT", "8000")
    url = f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url} did not answer ({reason}); is `edithook serve` running here?"
