"""What a run measured, judged against the targets, as a console table and as markdown.

`Measurements` collects the raw numbers; `build_rows` turns them into one `Row` per metric
(every metric always has a row: one that was not measured says so); `render_text` and
`render_markdown` print them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.loadgen import LoadResult

TARGET_INGEST_RATIO = 0.85
TARGET_INGEST_P99_MS = 50.0
TARGET_LIST_FIRST_P50_MS = 10.0
TARGET_DEEP_OVER_FIRST = 1.5
TARGET_SUBMIT_P50_MS = 5.0
TARGET_COMPLETION_P50_MS = 1000.0
TARGET_RSS_MB = 150.0
TARGET_WAITERS_LAST_MS = 1000.0
TARGET_WAITERS_P99_OVER_IDLE = 2.0
# CPU per task over its whole life and per GET, the figures later features are held to
# (bench/README.md, "What a task costs").
TARGET_TASK_API_CPU_MS = 7.6
TARGET_TASK_WORKER_CPU_MS = 22.0
TARGET_GET_API_CPU_MS = 2.3
# From the provider's completion to the caller's receiver holding the verified webhook.
TARGET_WEBHOOK_P50_MS = 100.0
TARGET_WEBHOOK_P99_MS = 500.0

# The comparison servers of the ingest benchmark, in the order they run.
INGEST_SERVERS = ("floor", "bound", "edithook")


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    target: str = "—"
    verdict: str = "—"


@dataclass
class WaiterRun:
    """The waiter phase (`bench.waiters`): `count` requests held on one task."""

    count: int = 0
    settled: int = 0
    # From the completion's commit to the last and the median answer, milliseconds.
    last_ms: float = math.nan
    median_ms: float = math.nan
    # Unrelated single-task GETs with no waiter, and around the completion of the waited task.
    idle: LoadResult | None = None
    loaded: LoadResult | None = None
    errors: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float:
        """Unrelated GET p99 with the waiters over idle (NaN when not measured)."""
        if self.idle is None or self.loaded is None or not self.idle.p99_ms:
            return math.nan
        return self.loaded.p99_ms / self.idle.p99_ms


@dataclass(frozen=True)
class CostFigure:
    """CPU milliseconds per unit of work, with what the machine was doing meanwhile."""

    ms: float
    load: tuple[float, float]  # 1-minute load average at the start and the end
    machine_cores: float  # cores of the machine busy on anything, on average
    postgres_cores: float  # … of them Postgres (every backend on the machine)
    # … of them anything but Postgres, the API, the worker, the simulator and the harness
    other_cores: float

    def describe(self) -> str:
        return (
            f"{self.ms:.2f} ms (load {self.load[0]:.2f}→{self.load[1]:.2f};"
            f" {self.machine_cores:.2f} cores busy: Postgres {self.postgres_cores:.2f},"
            f" other {self.other_cores:.2f})"
        )


@dataclass
class CostRun:
    """The cost phase (`bench.cost`): CPU per task over its life and per GET."""

    tasks: int = 0
    stored: int = 0
    rate: float = 0.0
    gets: int = 0
    per_task: dict[str, CostFigure] = field(default_factory=dict)
    per_get: CostFigure | None = None
    # CPU ms of a fixed piece of pure-Python work in the harness, around the phase: the VM's
    # speed then (it drifts); the figures over it compare across runs better than alone.
    calibration_ms: float = math.nan


@dataclass
class WebhookRun:
    """The webhook phase (`bench.webhooks`)."""

    tasks: int = 0
    # From the simulator's completion to the verified `task.succeeded` at the receiver.
    received_ms: list[float] = field(default_factory=list)
    messages: int = 0
    delivered: int = 0
    # Messages one worker delivered a second, from their commit to the last arrival.
    rate: float = math.nan
    worker_cpu_ms: float = math.nan
    failures: int = 0  # deliveries the receiver could not verify
    duplicates: int = 0  # arrivals of a webhook-id already received


@dataclass
class Measurements:
    """Everything a run measured; a phase that did not run leaves its part empty."""

    machine: dict[str, str] = field(default_factory=dict)
    tasks: int = 0
    big_tasks: int | None = None
    ingest: dict[str, LoadResult] = field(default_factory=dict)
    # size → "first" | "deep" | "get" → result
    listing: dict[int, dict[str, LoadResult]] = field(default_factory=dict)
    # size → the cursor of the deep page measured at that size
    deep_cursors: dict[int, str] = field(default_factory=dict)
    post: LoadResult | None = None
    submit_overhead_ms: list[float] = field(default_factory=list)
    # "before" | "after" | "record" → ms of each worker submit job spent in that phase
    submit_phases_ms: dict[str, list[float]] = field(default_factory=dict)
    stored_ms: list[float] = field(default_factory=list)
    served_ms: list[float] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    # One per round of the waiter phase (`--waiter-rounds`).
    waiter_rounds: list[WaiterRun] = field(default_factory=list)
    cost: CostRun | None = None
    webhooks: WebhookRun | None = None
    notes: list[str] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)


def short_count(number: int) -> str:
    """1000000 → 1M, 5000000 → 5M, 2000 → 2k, 2500 → 2.5k."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if number >= size:
            value = number / size
            return f"{value:g}{unit}" if value >= 10 else f"{value:.3g}{unit}"
    return str(number)


def ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f} ms"


def quantile(values: list[float], share: float) -> float:
    """Nearest-rank quantile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "—"
    return "met" if ok else "MISSED"


def _at_most(value: float, limit: float) -> str:
    return _verdict(None if math.isnan(value) else value <= limit)


def _ingest_rows(m: Measurements) -> list[Row]:
    rows: list[Row] = []
    for name in INGEST_SERVERS:
        result = m.ingest.get(name)
        label = f"callback ingest {name}"
        if result is None:
            rows += [Row(f"{label} {what}", "not run") for what in ("throughput", "p50", "p99")]
            continue
        p99_target, p99_verdict = "—", "—"
        if name == "edithook":
            p99_target = f"≤ {TARGET_INGEST_P99_MS:g} ms"
            p99_verdict = _at_most(result.p99_ms, TARGET_INGEST_P99_MS)
        rows += [
            Row(f"{label} throughput", f"{result.throughput:,.0f} req/s"),
            Row(f"{label} p50", ms(result.p50_ms)),
            Row(f"{label} p99", ms(result.p99_ms), p99_target, p99_verdict),
        ]
    service, bound, floor = (m.ingest.get(k) for k in ("edithook", "bound", "floor"))
    if service and bound and bound.throughput:
        ratio = service.throughput / bound.throughput
        rows.append(
            Row(
                "callback ingest edithook / bound",
                f"{ratio:.1%}",
                f"≥ {TARGET_INGEST_RATIO:.0%}",
                _verdict(ratio >= TARGET_INGEST_RATIO),
            )
        )
    else:
        rows.append(
            Row("callback ingest edithook / bound", "not run", f"≥ {TARGET_INGEST_RATIO:.0%}")
        )
    for name, numerator, denominator in (
        ("edithook / floor", service, floor),
        ("bound / floor", bound, floor),
    ):
        if numerator and denominator and denominator.throughput:
            ratio = numerator.throughput / denominator.throughput
            rows.append(Row(f"callback ingest {name}", f"{ratio:.1%}"))
        else:
            rows.append(Row(f"callback ingest {name}", "not run"))
    return rows


def _listing_rows(m: Measurements, size: int | None, *, targeted: bool) -> list[Row]:
    at = f"@ {short_count(size)}" if size else "@ big"
    found = m.listing.get(size or -1, {})
    first, deep = found.get("first"), found.get("deep")
    rows: list[Row] = []
    first_target = f"≤ {TARGET_LIST_FIRST_P50_MS:g} ms" if targeted else "—"
    if first is None:
        rows += [Row(f"list first page p50 {at}", "not run", first_target)]
        rows += [Row(f"list first page p99 {at}", "not run")]
    else:
        verdict = _at_most(first.p50_ms, TARGET_LIST_FIRST_P50_MS) if targeted else "—"
        rows += [
            Row(f"list first page p50 {at}", ms(first.p50_ms), first_target, verdict),
            Row(f"list first page p99 {at}", ms(first.p99_ms)),
        ]
    deep_target = f"≤ {TARGET_DEEP_OVER_FIRST:g} × first"
    if deep is None or first is None:
        rows += [Row(f"list deep page p50 {at}", "not run", deep_target)]
        rows += [Row(f"list deep page p99 {at}", "not run")]
    else:
        ratio = deep.p50_ms / first.p50_ms if first.p50_ms else math.nan
        rows += [
            Row(
                f"list deep page p50 {at}",
                f"{ms(deep.p50_ms)} ({ratio:.2f} ×)",
                deep_target,
                _at_most(ratio, TARGET_DEEP_OVER_FIRST),
            ),
            Row(f"list deep page p99 {at}", ms(deep.p99_ms)),
        ]
    return rows


def build_rows(m: Measurements) -> list[Row]:
    """One row per metric, in a fixed order, whatever ran."""
    rows = _ingest_rows(m)
    rows += _listing_rows(m, m.tasks, targeted=False)
    rows += _listing_rows(m, m.big_tasks, targeted=True)
    get = m.listing.get(m.tasks, {}).get("get")
    at = f"@ {short_count(m.tasks)}"
    rows += [
        Row(f"get task p50 {at}", ms(get.p50_ms) if get else "not run"),
        Row(f"get task p99 {at}", ms(get.p99_ms) if get else "not run"),
    ]
    submit_target = f"≤ {TARGET_SUBMIT_P50_MS:g} ms"
    post = m.post
    rows += [
        Row(
            "submission POST /v1/tasks p50",
            ms(post.p50_ms) if post else "not run",
            submit_target,
            _at_most(post.p50_ms, TARGET_SUBMIT_P50_MS) if post else "—",
        ),
        Row("submission POST /v1/tasks p99", ms(post.p99_ms) if post else "not run"),
    ]
    overhead = m.submit_overhead_ms
    p50 = quantile(overhead, 0.5)
    rows += [
        Row(
            "submission worker job − simulator p50",
            ms(p50),
            submit_target,
            _at_most(p50, TARGET_SUBMIT_P50_MS),
        ),
        Row("submission worker job − simulator p99", ms(quantile(overhead, 0.99))),
    ]
    stored50 = quantile(m.stored_ms, 0.5)
    rows += [
        Row(
            "completion → stored p50",
            ms(stored50),
            f"≤ {TARGET_COMPLETION_P50_MS:g} ms",
            _at_most(stored50, TARGET_COMPLETION_P50_MS),
        ),
        Row("completion → stored p99", ms(quantile(m.stored_ms, 0.99))),
        Row("completion → image served p50", ms(quantile(m.served_ms, 0.5))),
    ]
    rows += _waiter_rows(median_round(m.waiter_rounds))
    rows += _cost_rows(m.cost)
    rows += _webhook_rows(m.webhooks)
    for role in ("api", "worker"):
        peak = m.peak_rss_mb.get(role, math.nan)
        rows.append(
            Row(
                f"peak RSS {role}",
                "not run" if math.isnan(peak) else f"{peak:.1f} MB",
                f"≤ {TARGET_RSS_MB:g} MB",
                _at_most(peak, TARGET_RSS_MB),
            )
        )
    return rows


def median_round(rounds: list[WaiterRun]) -> WaiterRun | None:
    """The round whose p99 ratio is the median (the lower one of an even count)."""
    measured = sorted((run for run in rounds if not math.isnan(run.ratio)), key=lambda r: r.ratio)
    if not measured:
        return rounds[0] if rounds else None
    return measured[(len(measured) - 1) // 2]


def _waiter_rows(run: WaiterRun | None) -> list[Row]:
    names = (
        "waiters: completion → last answered",
        "waiters: completion → median answered",
        "waiters: unrelated GET p99 idle",
        "waiters: unrelated GET p99 with waiters",
    )
    if run is None or run.idle is None or run.loaded is None:
        return [Row(name, "not run") for name in names]
    ratio = run.ratio
    answered = run.settled == run.count
    return [
        Row(
            names[0],
            f"{ms(run.last_ms)} ({run.settled:,} of {run.count:,})",
            f"≤ {TARGET_WAITERS_LAST_MS:g} ms, all",
            _verdict(answered and run.last_ms <= TARGET_WAITERS_LAST_MS),
        ),
        Row(names[1], ms(run.median_ms)),
        Row(names[2], ms(run.idle.p99_ms)),
        Row(
            names[3],
            f"{ms(run.loaded.p99_ms)} ({ratio:.2f} ×)",
            f"≤ {TARGET_WAITERS_P99_OVER_IDLE:g} × idle",
            _at_most(ratio, TARGET_WAITERS_P99_OVER_IDLE),
        ),
    ]


def _cost_rows(run: CostRun | None) -> list[Row]:
    rows: list[Row] = []
    per_task = run.per_task if run else {}
    per_get = run.per_get if run else None
    for name, figure, limit in (
        ("cost per task api CPU", per_task.get("api"), TARGET_TASK_API_CPU_MS),
        ("cost per task worker CPU", per_task.get("worker"), TARGET_TASK_WORKER_CPU_MS),
        ("cost per GET /v1/tasks/{id} api CPU", per_get, TARGET_GET_API_CPU_MS),
    ):
        target = f"≤ {limit:g} ms"
        if figure is None:
            rows.append(Row(name, "not run", target))
        else:
            rows.append(Row(name, figure.describe(), target, _at_most(figure.ms, limit)))
    return rows


def _webhook_rows(run: WebhookRun | None) -> list[Row]:
    names = (
        "webhook: completion → received p50",
        "webhook: completion → received p99",
        "webhook: messages a second, one worker",
    )
    targets = (f"≤ {TARGET_WEBHOOK_P50_MS:g} ms", f"≤ {TARGET_WEBHOOK_P99_MS:g} ms", "—")
    if run is None or not run.received_ms:
        return [Row(name, "not run", target) for name, target in zip(names, targets, strict=True)]
    p50, p99 = quantile(run.received_ms, 0.5), quantile(run.received_ms, 0.99)
    rate = "—" if math.isnan(run.rate) else f"{run.rate:,.1f} /s"
    return [
        Row(names[0], ms(p50), targets[0], _at_most(p50, TARGET_WEBHOOK_P50_MS)),
        Row(names[1], ms(p99), targets[1], _at_most(p99, TARGET_WEBHOOK_P99_MS)),
        Row(names[2], f"{rate} ({run.delivered:,} of {run.messages:,})"),
    ]


def render_text(rows: list[Row]) -> str:
    header = Row("metric", "value", "target", "verdict")
    widths = [
        max(len(getattr(row, f)) for row in [header, *rows]) for f in ("metric", "value", "target")
    ]
    lines = []
    for row in [header, *rows]:
        metric, value, target = (
            row.metric.ljust(widths[0]),
            row.value.rjust(widths[1]),
            row.target.ljust(widths[2]),
        )
        lines.append(f"{metric}  {value}  {target}  {row.verdict}")
        if row is header:
            lines.append("-" * (sum(widths) + 6 + len("verdict")))
    return "\n".join(lines)


def render_markdown(m: Measurements, rows: list[Row]) -> str:
    lines = ["# edithook benchmark", "", "## Machine", ""]
    lines += [f"- {name}: {value}" for name, value in m.machine.items()]
    lines += ["", "## Results", "", "| metric | value | target | verdict |", "|---|---:|---|---|"]
    lines += [f"| {r.metric} | {r.value} | {r.target} | {r.verdict} |" for r in rows]
    if m.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in m.notes]
    if m.diagnostics:
        lines += ["", "## Diagnostics", "", *m.diagnostics]
    return "\n".join(lines) + "\n"


def describe(result: LoadResult) -> str:
    """A one-line account of a load run, for the notes."""
    statuses = ", ".join(f"{code}: {n:,}" for code, n in result.statuses.items()) or "none"
    extra = "; ran out of requests" if result.exhausted else ""
    cores = ", ".join(f"{name} {used:.2f}" for name, used in result.cpu_cores.items())
    return (
        f"{result.count:,} requests in {result.seconds:.1f} s (answers {statuses};"
        f" connection errors {result.errors}{extra}); p90 {ms(result.p90_ms)},"
        f" max {ms(result.max_ms)}; CPU cores used: {cores or 'not sampled'}"
    )
