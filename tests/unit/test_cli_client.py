"""The command-line client's pure parts: its imports, its arguments, names, parsing, output."""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli_client.api import Api, ApiError, sse_events
from app.cli_client.commands import (
    Usage,
    add_parsers,
    edit_body,
    result_filename,
    split_images,
    task_fields,
    wants,
)
from app.cli_client.display import PlainProgress, one_line, plain_columns, short_time
from tests.helpers import REPO
from tests.unit.test_import_graph import _type_checking_only

APP = REPO / "app"
# What the client may load besides the standard library: HTTP, and rich on a terminal.
LIGHT = frozenset({"httpx", "rich"})


def _path(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, *, in_functions: bool) -> set[str]:
    """The modules `tree` imports (at any depth, or only those run at import), but under
    `if TYPE_CHECKING:`; `from a import b` counts as `a.b` when that is a module of app/."""
    found: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            pending.extend(node.orelse)
            continue
        if not in_functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _path(submodule) else node.module)
        pending.extend(ast.iter_child_nodes(node))
    return found


def loaded_by(start: str, *, in_functions: bool) -> set[str]:
    """Every module that importing `start` can load: edithook's own, followed through, and
    the top-level names of the others."""
    seen: set[str] = set()
    outside: set[str] = set()
    pending = [start]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _path(module)
        if path is None:
            outside.add(module.split(".")[0])
            continue
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        pending.extend(parents)
        pending.extend(_imported(ast.parse(path.read_text()), in_functions=in_functions))
    return {m for m in seen if _path(m)} | outside


def test_the_client_loads_nothing_of_the_service() -> None:
    """Everything the client's modules import, even inside functions, is the client itself,
    the standard library, httpx and rich: no SQLAlchemy, procrastinate, pydantic, psycopg."""
    modules = set()
    for path in (APP / "cli_client").glob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules |= loaded_by(name, in_functions=True)
    assert "app.cli_client.api" in modules, "the graph was read"
    ours = {m for m in modules if m == "app" or m.startswith("app.")}
    assert ours <= {"app"} | {m for m in ours if m.startswith("app.cli_client")}
    others = {m for m in modules - ours if m not in sys.stdlib_module_names}
    assert others <= LIGHT


def test_the_cli_loads_only_the_client_before_it_dispatches() -> None:
    """`app.cli` imports the service's parts inside the commands that use them, so that
    `edithook edit` and `edithook tasks` load no more than the client."""
    modules = loaded_by("app.cli", in_functions=False)
    assert "app.cli_client.commands" in modules, "the graph was read"
    heavy = {m for m in modules if m not in sys.stdlib_module_names and m not in LIGHT}
    assert {m for m in heavy if not m.startswith("app")} == set()
    assert {m for m in heavy if m.startswith("app.")} <= {
        m for m in heavy if m.startswith("app.cli")
    }


def test_the_light_check_sees_a_heavy_import() -> None:
    """The checker follows app/ modules through, so that an empty answer means something."""
    modules = loaded_by("app.db", in_functions=True)
    assert "sqlalchemy" in modules


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edithook")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_edit_takes_the_documented_options() -> None:
    """Images, prompt, -n, --size, --negative-prompt, --seed, --out, --no-wait, --json."""
    args = _parse(
        "edit", "a.png", "https://x.example/b.png", "--prompt", "snow", "-n", "1",
        "--size", "1024x1024", "--negative-prompt", "blur", "--seed", "7", "--out", "o",
        "--no-wait", "--json", "--url", "http://h", "--key", "k",
    )  # fmt: skip
    assert args.images == ["a.png", "https://x.example/b.png"]
    assert (args.prompt, args.n, args.size, args.negative_prompt, args.seed) == (
        "snow", 1, "1024x1024", "blur", 7,
    )  # fmt: skip
    assert (args.out, args.no_wait, args.json, args.url, args.key) == (
        Path("o"), True, True, "http://h", "k",
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ("edit", "a.png"),  # no prompt
        ("edit", "--prompt", "x"),  # no image
        ("edit", "a.png", "--prompt", "x", "-n", "two"),
        ("tasks",),
        ("tasks", "list", "--status", "done"),
        ("tasks", "show"),
    ],
)
def test_bad_usage_exits_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse refuses what cannot be a command, with its usage, exit code 2."""
    with pytest.raises(SystemExit) as exit_:
        _parse(*argv)
    assert exit_.value.code == 2
    assert "usage: edithook" in capsys.readouterr().err


def test_tasks_list_takes_repeated_statuses() -> None:
    args = _parse("tasks", "list", "--status", "failed", "--status", "cancelled", "--limit", "5")
    assert (args.status, args.limit, args.json) == (["failed", "cancelled"], 5, False)


def test_only_client_commands_are_dispatched_early() -> None:
    """`edit` and `tasks` first on the line go to the client; anything else to the full CLI."""
    assert wants(["edit", "x"])
    assert wants(["tasks", "list"])
    assert not wants([])
    assert not wants(["serve"])
    assert not wants(["--help"])


def test_urls_are_sent_as_urls_and_files_are_uploaded(tmp_path: Path) -> None:
    """http(s) arguments (any case) are URLs; the rest must be files that exist."""
    image = tmp_path / "in.png"
    image.write_bytes(b"x")
    urls, files = split_images(["HTTPS://a.example/1.png", str(image), "http://b.example/2"])
    assert urls == ["HTTPS://a.example/1.png", "http://b.example/2"]
    assert files == [image]
    with pytest.raises(Usage, match="no such file"):
        split_images([str(tmp_path / "missing.png")])
    with pytest.raises(Usage, match="no such file"):
        split_images([str(tmp_path)])  # a directory
    with pytest.raises(Usage, match="at most 3 images, 4 given"):
        split_images(["https://a.example/x"] * 4)


@pytest.mark.parametrize(
    ("content_type", "name"),
    [
        ("image/png", "t-0.png"),
        ("image/jpeg", "t-0.jpg"),
        ("IMAGE/WEBP; q=1", "t-0.webp"),
        ("image/gif", "t-0.gif"),
        ("application/octet-stream", "t-0.bin"),
        ("nonsense", "t-0.bin"),
        (None, "t-0.bin"),
    ],
)
def test_results_are_named_by_task_index_and_content_type(
    content_type: str | None, name: str
) -> None:
    assert result_filename("t", 0, content_type) == name


def test_the_body_has_only_what_was_given() -> None:
    """Options left out are not sent, so the API's defaults apply; images in their fields."""
    args = _parse("edit", "x", "--prompt", "snow", "--seed", "0")
    assert edit_body(args, ["https://a.example/1.png"], []) == {
        "prompt": "snow",
        "image_urls": ["https://a.example/1.png"],
        "seed": 0,
    }
    assert edit_body(args, [], ["u1", "u2"]) == {
        "prompt": "snow",
        "image_ids": ["u1", "u2"],
        "seed": 0,
    }


def test_server_sent_events_are_read_by_their_fields() -> None:
    """Comments are skipped, data lines join, the id carries over, a blank line ends one."""
    lines = [
        ": keep-alive",
        "",
        "event: task",
        'data: {"a":',
        "data: 1}",
        "id: 5.0",
        "",
        "data:no space",
        "retry: 100",
        "",
    ]
    assert list(sse_events(iter(lines))) == [
        ("task", "5.0", '{"a":\n1}'),
        ("message", "5.0", "no space"),
    ]


def test_a_problem_is_told_by_its_title_detail_and_errors() -> None:
    problem = {
        "title": "The request is not valid",
        "status": 422,
        "detail": "2 problem(s) found",
        "errors": [{"field": "size", "message": "is only allowed when n is 1"}, "junk"],
    }
    assert ApiError(422, problem, "http://h/v1/tasks").lines() == [
        "The request is not valid (422): 2 problem(s) found",
        "  size: is only allowed when n is 1",
    ]
    assert ApiError(502, None, "http://h/v1/tasks").lines() == [
        "HTTP 502 from http://h/v1/tasks, not a problem document"
    ]


def test_plain_progress_is_one_line_per_status_change() -> None:
    out = io.StringIO()
    progress = PlainProgress(out)
    for status, value in [("queued", 0), ("pending", 0), ("processing", 10), ("processing", 50)]:
        progress.update({"id": "t1", "status": status, "progress": value})
    progress.update({"id": "t1", "status": "completed", "result_count": 1})
    assert out.getvalue().splitlines() == [
        "t1 queued",
        "t1 pending",
        "t1 processing",
        "t1 completed (1 result)",
    ]


def test_plain_text_helpers() -> None:
    assert short_time("2026-11-24T05:14:44.990535Z") == "2026-11-24 05:14:44Z"
    assert short_time("2026-11-24T05:14:44+02:00") == "2026-11-24 05:14:44+02:00"
    assert short_time(None) == ""
    assert one_line("a\n  b", 10) == "a b"
    assert one_line("abcdefghijk", 5) == "abcd…"
    assert plain_columns(("ID", "S"), [("1", "done"), ("22", "x")]) == [
        "ID  S",
        "1   done",
        "22  x",
    ]


def test_show_lists_what_the_task_has() -> None:
    task = {
        "id": "t1",
        "status": "failed",
        "progress": 90,
        "request": {"prompt": "p", "image_urls": ["https://a/1"], "image_ids": ["u1"], "n": 1},
        "error": {"code": "content_policy_violation", "message": "No.\nReally."},
        "result_count": 0,
        "results_stored": False,
        "metadata": {},
        "created_at": "2026-11-24T05:14:44Z",
        "submitted_at": None,
    }
    fields = dict(task_fields(task))
    assert fields["images"] == "https://a/1, u1"
    assert fields["error"] == "content_policy_violation: No. Really."
    assert "submitted" not in fields
    assert "metadata" not in fields


def _stream(events: list[tuple[str, dict[str, object]]]) -> bytes:
    return b"".join(
        f"event: task\r\ndata: {json.dumps(task)}\r\nid: {event_id}\r\n\r\n".encode()
        for event_id, task in events
    )


def test_following_resumes_a_cut_stream_from_the_last_event() -> None:
    """A stream that ends before the task is settled is resumed with `Last-Event-ID`; the
    settled task is confirmed by `Prefer: wait` (the API over a transport of the test's)."""
    calls: list[tuple[str, str | None]] = []
    streams: Iterator[bytes] = iter(
        [
            _stream([("1.0", {"id": "t", "status": "queued"})]),  # cut: a server restart
            _stream([("2.0", {"id": "t", "status": "completed"})]),
        ]
    )
    settled = iter([False, True])

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append((request.url.path, request.headers.get("last-event-id")))
        if request.url.path.endswith("/stream"):
            return httpx.Response(200, content=next(streams))
        wait = "settled" if next(settled) else "timed-out"
        status = "completed" if wait == "settled" else "queued"
        return httpx.Response(
            200, json={"id": "t", "status": status}, headers={"Edithook-Wait": wait}
        )

    api = Api("http://edithook.test", "k", transport=httpx.MockTransport(answer))
    seen: list[str] = []
    task = api.follow("t", lambda change: seen.append(str(change["status"])))
    assert task["status"] == "completed"
    assert seen == ["queued", "completed", "completed"]
    assert calls == [
        ("/v1/tasks/t/stream", None),
        ("/v1/tasks/t", None),
        ("/v1/tasks/t/stream", "1.0"),
        ("/v1/tasks/t", None),
    ]
