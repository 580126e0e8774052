"""What the client shows: progress while a task runs, and tasks and events as tables.

On a terminal, rich draws a live line (a spinner, the task's status, a bar with its
progress, the time spent) and tables; rich is imported only then, so a script piping the
output pays nothing for it. Elsewhere the output is plain: one line per status change, and
tables as aligned columns of text, which `grep`, `cut` and `head` read well.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

Task = dict[str, Any]
TERMINAL = ("completed", "failed", "cancelled")
STATUS_STYLES = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "processing": "cyan",
    "pending": "blue",
}


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


def short_time(value: object) -> str:
    """An API timestamp (RFC 3339) to the second, as a person reads it: `2026-11-24 05:14:44Z`."""
    if not isinstance(value, str) or len(value) < 19:
        return "" if value is None else str(value)
    zone = "Z" if value.endswith(("Z", "z", "+00:00")) else value[-6:]
    return f"{value[:10]} {value[11:19]}{zone}"


def one_line(text: object, width: int) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class Progress(Protocol):
    """Shows a task's changes while the client waits."""

    def note(self, message: str) -> None: ...
    def update(self, task: Task) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class PlainProgress:
    """One line per status change: `<task id> <status>`."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.shown: str | None = None

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()

    def note(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def update(self, task: Task) -> None:
        status = str(task.get("status"))
        if status == self.shown:
            return
        self.shown = status
        line = f"{task.get('id')} {status}"
        if status == "completed":
            count = task.get("result_count", 0)
            line += f" ({count} result{'' if count == 1 else 's'})"
        self.note(line)


class LiveProgress:
    """rich's live progress line: spinner, status, bar, percentage, time spent."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        self.bar: RichProgress = RichProgress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
        )
        self.row: TaskID | None = None

    def __enter__(self) -> LiveProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def note(self, message: str) -> None:
        self.bar.console.print(message, highlight=False, markup=False)

    def update(self, task: Task) -> None:
        status = str(task.get("status"))
        style = STATUS_STYLES.get(status, "white")
        description = f"task {task.get('id')} [{style}]{status}[/]"
        done = status in TERMINAL
        progress = 100 if status == "completed" else int(task.get("progress") or 0)
        if self.row is None:
            self.row = self.bar.add_task(description, total=100)
        self.bar.update(self.row, description=description, completed=progress)
        if done:
            # Stops the spinner and the clock where the task ended.
            self.bar.stop_task(self.row)


def progress_for(stream: IO[str]) -> Progress:
    """The live line on a terminal, plain lines elsewhere."""
    return LiveProgress(stream) if is_terminal(stream) else PlainProgress(stream)


def print_table(
    stream: IO[str],
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    styles: dict[int, dict[str, str]] | None = None,
) -> None:
    """Rows under headers: a rich table on a terminal, aligned plain columns elsewhere.
    `styles` maps a column to the style of each of its values (statuses in colour)."""
    if is_terminal(stream):
        from rich.console import Console
        from rich.table import Column, Table

        # Every column whole (ids are copied from here), but the last, cut to what is left.
        columns = [
            Column(header, no_wrap=True, min_width=max(len(r[i]) for r in [headers, *rows]))
            for i, header in enumerate(headers[:-1])
        ]
        columns.append(Column(headers[-1], no_wrap=True, overflow="ellipsis"))
        table = Table(*columns, header_style="bold", box=None, pad_edge=False)
        for row in rows:
            cells = [
                f"[{(styles or {}).get(i, {}).get(cell, '')}]{_escape(cell)}[/]"
                if (styles or {}).get(i, {}).get(cell)
                else _escape(cell)
                for i, cell in enumerate(row)
            ]
            table.add_row(*cells)
        Console(file=stream).print(table)
        return
    for line in plain_columns(headers, rows):
        print(line, file=stream)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def plain_columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Headers and rows as lines of columns padded to their widest cell, two spaces apart."""
    table = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table
    ]


def print_fields(stream: IO[str], fields: Sequence[tuple[str, str]]) -> None:
    """Names and values: a two-column rich grid on a terminal, `name: value` lines elsewhere."""
    if is_terminal(stream):
        from rich.console import Console
        from rich.table import Table

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        for name, value in fields:
            grid.add_row(_escape(name), _escape(value))
        Console(file=stream).print(grid)
        return
    for name, value in fields:
        print(f"{name}: {value}", file=stream)
