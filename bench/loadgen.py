"""A closed-loop HTTP/1.1 load generator, run as its own process.

`python -m bench.loadgen SPEC OUT` reads a JSON `Spec`, opens `concurrency` keep-alive
connections with `asyncio.open_connection`, and on each one sends the next request as soon as
the previous answer has been read (status line, headers, then `Content-Length` bytes or the
chunks). Every request's latency is taken with `time.perf_counter_ns`; only requests sent
after the warm-up and answered before the end count. The result is written to OUT as JSON
(`LoadResult`).

Requests come pre-built, as raw bytes, from a file of 4-byte big-endian lengths each followed
by one request. Mode `cycle` repeats them round-robin; mode `once` sends each exactly once,
in file order across all connections, and stops early when they run out (`exhausted`).

A separate process keeps the generator off the event loop of whatever it measures.
`run_load` is the parent's side: it writes the files, runs the process, reads the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvloop

from bench.procs import cpu_cores, cpu_snapshot

Mode = Literal["cycle", "once"]


@dataclass(frozen=True)
class Spec:
    """What to run: where, how many connections, for how long, which requests."""

    host: str
    port: int
    requests_file: str
    mode: Mode = "cycle"
    concurrency: int = 32
    duration: float = 10.0
    warmup: float = 2.0
    # Processes whose CPU use over the measured window is reported, by name.
    watch: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadResult:
    """What one run measured; latencies in milliseconds, throughput in requests per second.

    `count` and the percentiles cover the measured window only (after the warm-up);
    `statuses` counts every answer in that window by HTTP status; `errors` counts connection
    failures and malformed answers at any time.
    """

    count: int = 0
    seconds: float = 0.0
    throughput: float = 0.0
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    sent: int = 0
    exhausted: bool = False
    # Cores used over the measured window: each watched process, "postgres" (every local
    # postgres process), "load generator", and "machine" (all busy CPU time).
    cpu_cores: dict[str, float] = field(default_factory=dict)
    # Every latency of the measured window, in nanoseconds, ascending (for `combine`).
    latencies_ns: list[int] = field(default_factory=list, repr=False)


def _fill_percentiles(result: LoadResult) -> LoadResult:
    values = result.latencies_ns
    if values:
        result.p50_ms = percentile(values, 0.50) / 1e6
        result.p90_ms = percentile(values, 0.90) / 1e6
        result.p99_ms = percentile(values, 0.99) / 1e6
        result.max_ms = values[-1] / 1e6
    return result


def combine(results: list[LoadResult]) -> LoadResult:
    """Several runs against one server as one: counts and time added, percentiles of all
    their latencies together, cores averaged over their measured time."""
    seconds = sum(r.seconds for r in results)
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r.statuses)
    names = {name for r in results for name in r.cpu_cores}
    combined = LoadResult(
        count=sum(r.count for r in results),
        seconds=seconds,
        throughput=sum(r.count for r in results) / seconds if seconds else 0.0,
        statuses=dict(sorted(statuses.items())),
        errors=sum(r.errors for r in results),
        sent=sum(r.sent for r in results),
        exhausted=any(r.exhausted for r in results),
        cpu_cores={
            name: sum(r.cpu_cores.get(name, 0.0) * r.seconds for r in results) / seconds
            for name in sorted(names)
        },
        latencies_ns=sorted(v for r in results for v in r.latencies_ns),
    )
    return _fill_percentiles(combined)


def build_request(
    method: str,
    path: str,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    """One HTTP/1.1 keep-alive request as raw bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def write_requests(path: Path, requests: Iterable[bytes]) -> int:
    """Write `requests` in the generator's file format; returns how many were written."""
    count = 0
    with path.open("wb") as out:
        for request in requests:
            out.write(struct.pack(">I", len(request)))
            out.write(request)
            count += 1
    return count


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    requests: list[bytes] = []
    offset = 0
    while offset < len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        requests.append(data[offset : offset + size])
        offset += size
    return requests


def percentile(sorted_values: list[int], share: float) -> int:
    """Nearest-rank percentile of an ascending list (which must not be empty)."""
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Source:
    """Hands out requests to every connection in turn."""

    def __init__(self, requests: list[bytes], mode: Mode) -> None:
        self._requests = requests
        self._mode = mode
        self._next = 0
        self.exhausted = False

    def take(self) -> bytes | None:
        index = self._next
        self._next += 1
        if self._mode == "cycle":
            return self._requests[index % len(self._requests)]
        if index >= len(self._requests):
            self.exhausted = True
            return None
        return self._requests[index]


class _Malformed(Exception):
    pass


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; its status, and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise _Malformed(lines[0])
    status = int(parts[1])
    length: int | None = None
    chunked = closing = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and "close" in value.lower():
            closing = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, closing


async def _connection(
    spec: Spec,
    source: _Source,
    window: tuple[int, int],
    latencies: array[int],
    statuses: Counter[int],
    totals: Counter[str],
) -> None:
    """One client connection: request, answer, repeat until the end or the requests run out."""
    start_ns, end_ns = window
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    try:
        while True:
            request = source.take()
            if request is None:
                return
            sent_ns = time.perf_counter_ns()
            if sent_ns >= end_ns:
                return
            writer.write(request)
            totals["sent"] += 1
            try:
                status, closing = await read_answer(reader)
            except (OSError, asyncio.IncompleteReadError, _Malformed, ValueError):
                totals["errors"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
                continue
            done_ns = time.perf_counter_ns()
            if sent_ns >= start_ns and done_ns <= end_ns:
                latencies.append(done_ns - sent_ns)
                statuses[status] += 1
                totals["last_ns"] = max(totals["last_ns"], done_ns)
            if closing:
                writer.close()
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _watch_cpu(watch: dict[str, int], window: tuple[int, int], out: dict[str, float]) -> None:
    """Fill `out` with the cores used from the window's start to its end, or to the moment
    this is cancelled (the requests ran out) if that comes first."""
    await asyncio.sleep(max(0.0, (window[0] - time.perf_counter_ns()) / 1e9))
    before, started = cpu_snapshot(watch), time.perf_counter()
    try:
        await asyncio.sleep(max(0.0, (window[1] - time.perf_counter_ns()) / 1e9))
    finally:
        elapsed = time.perf_counter() - started
        if elapsed > 0:
            out.update(cpu_cores(before, cpu_snapshot(watch), elapsed))


async def generate(spec: Spec, requests: list[bytes]) -> LoadResult:
    """Run the load described by `spec` in this process's event loop."""
    if not requests:
        raise ValueError("no requests to send")
    source = _Source(requests, spec.mode)
    now = time.perf_counter_ns()
    window = (now + int(spec.warmup * 1e9), now + int((spec.warmup + spec.duration) * 1e9))
    per_connection = [array("q") for _ in range(spec.concurrency)]
    statuses: Counter[int] = Counter()
    totals: Counter[str] = Counter()
    cores: dict[str, float] = {}
    cpu = asyncio.create_task(_watch_cpu(spec.watch, window, cores))
    await asyncio.gather(
        *(
            _connection(spec, source, window, latencies, statuses, totals)
            for latencies in per_connection
        )
    )
    cpu.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cpu
    values = sorted(value for latencies in per_connection for value in latencies)
    end_ns = window[1]
    if source.exhausted and totals["last_ns"]:
        end_ns = min(end_ns, totals["last_ns"])
    seconds = max(1e-9, (end_ns - window[0]) / 1e9)
    return _fill_percentiles(
        LoadResult(
            count=len(values),
            seconds=seconds,
            throughput=len(values) / seconds,
            statuses={str(code): n for code, n in sorted(statuses.items())},
            errors=totals["errors"],
            sent=totals["sent"],
            exhausted=source.exhausted,
            cpu_cores=cores,
            latencies_ns=values,
        )
    )


def run_load(
    spec: Spec, requests: Iterable[bytes] | None = None, timeout: float = 600
) -> LoadResult:
    """Run the generator in a child process and return what it measured.

    `requests`, when given, are written to `spec.requests_file` first and the file is
    removed afterwards.
    """
    if requests is not None:
        write_requests(Path(spec.requests_file), requests)
    try:
        return _run_child(spec, timeout)
    finally:
        if requests is not None:
            Path(spec.requests_file).unlink(missing_ok=True)


def _run_child(spec: Spec, timeout: float) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="edithook-load-") as scratch:
        spec_path, out_path = Path(scratch, "spec.json"), Path(scratch, "out.json")
        spec_path.write_text(json.dumps(asdict(spec)))
        subprocess.run(  # noqa: S603 - our own module, in our own interpreter
            [sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)],
            check=True,
            timeout=timeout + spec.warmup + spec.duration,
            cwd=Path(__file__).resolve().parents[1],
        )
        payload: dict[str, Any] = json.loads(out_path.read_text())
    return LoadResult(**payload)


def main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = Spec(**json.loads(spec_path.read_text()))
    requests = read_requests(Path(spec.requests_file))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(generate(spec, requests))
    out_path.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
