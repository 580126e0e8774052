"""py-spy's raw samples of a process, read and summed up as markdown.

`parse_raw` reads `py-spy record --format raw` (one line per distinct stack); `render_profile`
says what the samples were doing (by rules per process kind), and lists the top functions
by self and cumulative share and the packages by self share.
"""

from __future__ import annotations

from collections import Counter

PROFILE_RATE_HZ = 250
TOP = 15


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw format: one line per distinct stack, `frame;frame;… count`."""
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def area(frame: str) -> str:
    """The package (or, for our own code, the module) a frame `name (file)` belongs to."""
    path = frame.rpartition(" (")[2].rstrip(")")
    parts = path.split("/")
    if parts[0] in ("app", "bench"):
        return path.removesuffix(".py")
    return parts[0].removesuffix(".py")


# What a sample was doing: the first rule with a frame containing its text (with a leading
# ^, the innermost frame being it); samples no rule takes count under the package of their
# innermost frame. The order matters (the decode runs under the copy job, every job under
# procrastinate's run_job).
ACTIVITIES: dict[str, tuple[tuple[str, str], ...]] = {
    "worker": (
        ("copy job: decoding the image to check it (Pillow, in a thread)", "_decode (app/results"),
        ("copy job: the rest (confirm, download, store, record)", "(app/results/"),
        ("submit job", "(app/tasks/submission.py)"),
        ("other jobs (reconcile, sweep, …)", "run_job (procrastinate/worker.py)"),
        ("procrastinate: fetching the next job", "_fetch_and_process_jobs (procrastinate"),
        ("procrastinate: recording a job's end", "_persist_job_status (procrastinate"),
        ("procrastinate: the rest (logging, listening, periodic, heartbeat)", "(procrastinate/"),
        ("SQLAlchemy in greenlets (ORM work py-spy cannot tie to its job)", "(sqlalchemy/"),
        ("the event loop: epoll, waking up", "^EpollSelector.select (selectors.py)"),
    ),
    "api": (
        ("POST /v1/tasks", "create_task (app/tasks/routes.py)"),
        ("callbacks", "(app/callbacks/"),
        ("waiting requests' notifications", "(app/waiting.py)"),
        ("HTTP, middleware and routing around the handlers", "run_asgi (uvicorn/"),
        ("SQLAlchemy in greenlets (ORM work py-spy cannot tie to its request)", "(sqlalchemy/"),
        # uvloop runs the loop in C: sockets, HTTP parsing (httptools), timers.
        ("the event loop itself (uvloop, in C)", "^Runner.run (asyncio/runners.py)"),
    ),
}


def activity(role: str, frames: list[str]) -> str:
    for label, needle in ACTIVITIES.get(role, ()):
        if needle.startswith("^") and frames[-1] == needle[1:]:
            return label
        if any(needle in frame for frame in frames):
            return label
    return f"elsewhere: `{area(frames[-1])}`"


# Frames under which everything runs (the interpreter's start, the CLI, the event loop, a
# pool thread's loop): their cumulative share says nothing.
PLUMBING = (
    "<frozen runpy>",
    "app/cli.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "threading.py",
    "concurrent/futures/thread.py",
)


def _plumbing(frame: str) -> bool:
    return frame.endswith(tuple(f"({path})" for path in PLUMBING))


def render_profile(
    role: str, stacks: list[tuple[list[str], int]], tasks: int, per_task_ms: float
) -> list[str]:
    """What the samples were doing, and the top functions by self and cumulative share and
    packages by self share; with the milliseconds per task each activity's share comes to."""
    heading = "The worker" if role == "worker" else "The API, for comparison"
    total = sum(count for _, count in stacks)
    if not total:
        return [f"{heading}: no samples.", ""]
    own: Counter[str] = Counter()
    through: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    doing: Counter[str] = Counter()
    for frames, count in stacks:
        doing[activity(role, frames)] += count
        own[frames[-1]] += count
        packages[area(frames[-1])] += count
        for frame in set(frames):
            through[frame] += count
    lines = [
        f"**{heading}**: {total:,} samples at {PROFILE_RATE_HZ} Hz while {tasks} tasks lived."
        " A thread is sampled while the kernel has it runnable (running, or waiting for a"
        " core on a busy machine); time in C counts for its Python caller. *≈ ms per task*"
        " is the share of the measured CPU per task.",
        "",
        "| share | ≈ ms per task | doing |",
        "|---:|---:|---|",
    ]
    shown = [(label, n) for label, n in doing.most_common() if n >= total / 100]
    rest = total - sum(n for _, n in shown)
    lines += [
        f"| {n / total:.1%} | {n / total * per_task_ms:.2f} | {label} |"
        for label, n in [*shown, ("everything else (under 1 % each)", rest)]
    ]
    lines += [
        "",
        "| self | package, or our module |",
        "|---:|---|",
    ]
    lines += [f"| {n / total:.1%} | `{name}` |" for name, n in packages.most_common(TOP)]
    lines += ["", "| self | function |", "|---:|---|"]
    lines += [f"| {n / total:.1%} | `{frame}` |" for frame, n in own.most_common(TOP)]
    busiest = [(f, n) for f, n in through.most_common() if not _plumbing(f)]
    lines += ["", "| cumulative | function |", "|---:|---|"]
    lines += [f"| {n / total:.1%} | `{frame}` |" for frame, n in busiest[:TOP]]
    ours = [(f, n) for f, n in busiest if area(f).startswith("app/")]
    lines += ["", "| cumulative | our function |", "|---:|---|"]
    lines += [f"| {n / total:.1%} | `{frame}` |" for frame, n in ours[:TOP]]
    return [*lines, ""]
