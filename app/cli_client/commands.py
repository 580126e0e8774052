"""`edithook edit` and `edithook tasks list|show|events`: their arguments and exit codes.

Exit codes: 0 done; 1 the task failed or was cancelled, or a result could not be kept
(the reason is printed); 2 a usage error, an HTTP error (the problem's title and detail are
printed) or a server that cannot be reached (one line); 130 interrupted (the task goes on,
and its id is printed); 141 the reader of the output went away (`… | head`).

Output: what a command answers (saved files, a task id, tables, `--json` documents) goes
to stdout; `edit` also shows its progress there while it waits, unless `--json` or
`--no-wait` keep stdout for the answer alone, when progress goes to stderr. Errors go to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mimetypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from app.cli_client.api import Api, ApiError, Task
from app.cli_client.display import (
    STATUS_STYLES,
    one_line,
    print_fields,
    print_table,
    progress_for,
    short_time,
)

CLIENT_COMMANDS = frozenset({"edit", "tasks"})
MAX_IMAGES = 3
STATUSES = ("queued", "submitting", "pending", "processing", "completed", "failed", "cancelled")
DONE, TASK_FAILED, USAGE, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 130, 141
# The extension a result is saved with, by its content type; others ask `mimetypes`.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class Usage(Exception):
    """The command cannot run as given; the message says why."""


def wants(argv: list[str]) -> bool:
    """Whether `argv` names a client command (dispatched before the service's parts load)."""
    return bool(argv) and argv[0] in CLIENT_COMMANDS


def is_url(argument: str) -> bool:
    return argument.lower().startswith(("http://", "https://"))


def split_images(arguments: list[str]) -> tuple[list[str], list[Path]]:
    """The URLs (sent as `image_urls`) and the local files (uploaded, sent as `image_ids`);
    Usage when there are more than three or a file is not there."""
    if len(arguments) > MAX_IMAGES:
        raise Usage(f"at most {MAX_IMAGES} images, {len(arguments)} given")
    urls = [argument for argument in arguments if is_url(argument)]
    files = [Path(argument) for argument in arguments if not is_url(argument)]
    for path in files:
        if not path.is_file():
            raise Usage(f"{path}: no such file (or not a file; URLs start with https://)")
    return urls, files


def result_filename(task_id: str, index: int, content_type: str | None) -> str:
    """`<task id>-<index>.<ext>`, the extension from the stored image's content type."""
    kind = (content_type or "").split(";")[0].strip().lower()
    extension = EXTENSIONS.get(kind) or (mimetypes.guess_extension(kind) or ".bin").lstrip(".")
    return f"{task_id}-{index}.{extension}"


def edit_body(args: argparse.Namespace, urls: list[str], upload_ids: list[str]) -> dict[str, Any]:
    """The `POST /v1/tasks` body: only what was given, so the API's defaults apply."""
    body: dict[str, Any] = {"prompt": args.prompt}
    if urls:
        body["image_urls"] = urls
    if upload_ids:
        body["image_ids"] = upload_ids
    for name in ("n", "size", "negative_prompt", "seed"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    return body


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def edit(api: Api, args: argparse.Namespace) -> int:
    urls, files = split_images(args.images)
    out_dir: Path = args.out
    if not args.no_wait:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Usage(f"--out {out_dir}: {exc.strerror or exc}") from exc
        if not os.access(out_dir, os.W_OK):
            raise Usage(f"--out {out_dir}: not writable")
    shows: IO[str] = sys.stderr if args.json or args.no_wait else sys.stdout
    task: Task | None = None
    interrupted: str | None = None
    with progress_for(shows) as progress:
        try:
            upload_ids = []
            for path in files:
                upload = api.upload(path)
                upload_ids.append(str(upload["id"]))
                progress.note(f"uploaded {path} as {upload['id']}")
            task = api.create_task(edit_body(args, urls, upload_ids))
            if args.no_wait:
                if args.json:
                    _print_json(task)
                else:
                    print(task["id"])
                return DONE
            progress.update(task)
            task = api.follow(str(task["id"]), progress.update)
        except KeyboardInterrupt:
            if task is None:
                raise
            interrupted = str(task["id"])
    if interrupted:
        print(
            f"edithook edit: interrupted; task {interrupted} goes on"
            f" (edithook tasks show {interrupted})",
            file=sys.stderr,
        )
        return INTERRUPTED
    return _finish(api, task, out_dir, json_out=args.json, shows=shows)


def error_reason(task: Task) -> str:
    """The task's error as one line: `code: message`."""
    error = task.get("error") or {}
    parts = (error.get("code"), error.get("message"))
    return one_line(": ".join(str(part) for part in parts if part), 1000)


def _finish(api: Api, task: Task, out_dir: Path, *, json_out: bool, shows: IO[str]) -> int:
    task_id, status = str(task["id"]), task["status"]
    if status != "completed":
        if json_out:
            _print_json(task)
        reason = error_reason(task) or "no reason given"
        print(f"edithook edit: task {task_id} {status}: {reason}", file=sys.stderr)
        return TASK_FAILED
    problems = save_results(api, task_id, out_dir, lambda line: print(line, file=shows))
    if json_out:
        _print_json(task)
    for problem in problems:
        print(f"edithook edit: task {task_id}: {problem}", file=sys.stderr)
    return TASK_FAILED if problems else DONE


def save_results(api: Api, task_id: str, out_dir: Path, say: Callable[[str], None]) -> list[str]:
    """Save each stored result into `out_dir`, saying where; the results that were not kept."""
    problems = []
    for item in api.results(task_id)["items"]:
        index = int(item["index"])
        if item["status"] != "stored":
            problems.append(f"result {index} was not kept: {item.get('error') or item['status']}")
            continue
        path = out_dir / result_filename(task_id, index, item.get("content_type"))
        partial = path.with_name(f".{path.name}.part")
        try:
            with partial.open("wb") as file:
                api.download(task_id, index, file.write)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        say(f"saved {path}")
    return problems


def tasks_list(api: Api, args: argparse.Namespace) -> int:
    page = api.list_tasks(args.status or [], args.limit, args.cursor)
    if args.json:
        _print_json(page)
        return DONE
    rows = [
        [
            str(task["id"]),
            str(task["status"]),
            f"{task.get('progress', 0)}%",
            str(task.get("result_count", 0)),
            short_time(task.get("created_at")),
            one_line((task.get("request") or {}).get("prompt"), 48),
        ]
        for task in page["items"]
    ]
    headers = ("ID", "STATUS", "PROGRESS", "RESULTS", "CREATED", "PROMPT")
    print_table(sys.stdout, headers, rows, styles={1: STATUS_STYLES})
    if page.get("next_cursor"):
        print(f"more: edithook tasks list --cursor {page['next_cursor']}", file=sys.stderr)
    return DONE


def task_fields(task: Task) -> list[tuple[str, str]]:
    """What `tasks show` lists of a task, leaving out what is empty."""
    request = task.get("request") or {}
    images = [*request.get("image_urls", []), *request.get("image_ids", [])]
    results = str(task.get("result_count", 0))
    if task.get("results_stored"):
        results += ", all stored"
    fields = [
        ("id", task.get("id")),
        ("status", task.get("status")),
        ("progress", f"{task.get('progress', 0)}%"),
        ("prompt", request.get("prompt")),
        ("negative prompt", request.get("negative_prompt")),
        ("images", ", ".join(str(image) for image in images)),
        ("n", request.get("n")),
        ("size", request.get("size")),
        ("seed", request.get("seed")),
        ("error", error_reason(task)),
        ("results", results),
        ("resolved by", task.get("resolved_by")),
        ("provider task", task.get("provider_task_id")),
        ("created", short_time(task.get("created_at"))),
        ("submitted", short_time(task.get("submitted_at"))),
        ("finished", short_time(task.get("finished_at"))),
        ("webhook", task.get("webhook_url")),
        ("metadata", json.dumps(task["metadata"]) if task.get("metadata") else None),
    ]
    return [(name, str(value)) for name, value in fields if value not in (None, "")]


def tasks_show(api: Api, args: argparse.Namespace) -> int:
    task = api.get_task(args.id)
    if args.json:
        _print_json(task)
    else:
        print_fields(sys.stdout, task_fields(task))
    return DONE


def tasks_events(api: Api, args: argparse.Namespace) -> int:
    page = api.events(args.id)
    if args.json:
        _print_json(page)
        return DONE
    rows = [
        [
            str(event["id"]),
            short_time(event.get("created_at")),
            str(event.get("kind")),
            str(event.get("outcome")),
            _change(event),
            str(event.get("provider_status") or ""),
            one_line(event.get("detail"), 60),
        ]
        for event in page["items"]
    ]
    headers = ("ID", "TIME", "KIND", "OUTCOME", "CHANGE", "PROVIDER", "DETAIL")
    print_table(sys.stdout, headers, rows)
    return DONE


def _change(event: dict[str, Any]) -> str:
    if not event.get("to_status"):
        return ""
    return f"{event.get('from_status') or '-'} → {event['to_status']}"


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="edithook's address (default: $EDITHOOK_URL)")
    parser.add_argument("--key", help="your API key (default: $EDITHOOK_KEY, which ps cannot show)")


def add_parsers(commands: Any) -> None:
    """Add `edit` and `tasks` with their subcommands to the CLI's subparsers."""
    edit_parser = commands.add_parser(
        "edit", help="run an edit on a running edithook and save the results"
    )
    edit_parser.add_argument(
        "images", nargs="+", metavar="IMAGE_OR_URL", help="1–3 local files or https URLs"
    )
    edit_parser.add_argument("--prompt", required=True, help="what to change")
    edit_parser.add_argument("-n", type=int, help="how many images to make (1–6)")
    edit_parser.add_argument("--size", metavar="WxH", help="e.g. 1024x1536; only with n = 1")
    edit_parser.add_argument("--negative-prompt", metavar="TEXT")
    edit_parser.add_argument("--seed", type=int)
    edit_parser.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR", help="where results go (default: .)"
    )
    edit_parser.add_argument("--no-wait", action="store_true", help="print the task id and exit")
    edit_parser.add_argument("--json", action="store_true", help="print the task as JSON")
    _add_connection(edit_parser)
    edit_parser.set_defaults(handler=edit, usage=edit_parser)

    tasks = commands.add_parser("tasks", help="list tasks, show one, show its events")
    actions = tasks.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="your tasks, newest first")
    listing.add_argument("--status", action="append", choices=STATUSES, help="repeatable")
    listing.add_argument("--limit", type=int, default=20, help="at most 100 (default: 20)")
    listing.add_argument("--cursor", help="the next page, as the previous one said")
    listing.set_defaults(handler=tasks_list, usage=listing)
    show = actions.add_parser("show", help="one task")
    show.add_argument("id")
    show.set_defaults(handler=tasks_show, usage=show)
    events = actions.add_parser("events", help="one task's history, oldest first")
    events.add_argument("id")
    events.set_defaults(handler=tasks_events, usage=events)
    for parser in (listing, show, events):
        parser.add_argument("--json", action="store_true", help="print what the API answers")
        _add_connection(parser)


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    url = args.url or os.environ.get("EDITHOOK_URL", "")
    key = args.key or os.environ.get("EDITHOOK_KEY", "")
    if not url:
        raise Usage("set EDITHOOK_URL (or --url) to edithook's address, e.g. http://127.0.0.1:8000")
    if not key:
        raise Usage("set EDITHOOK_KEY (or --key) to your API key")
    if not is_url(url):
        raise Usage(f"EDITHOOK_URL must start with http:// or https://, not {url!r}")
    return url, key


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so the exit's flush cannot fail too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run(args: argparse.Namespace) -> int:
    """Run the parsed client command; every failure is a line or two and an exit code."""
    words = ("edithook", args.command, getattr(args, "action", None))
    name = " ".join(word for word in words if word)
    url = ""

    def say(line: str) -> None:
        print(f"{name}: {line}", file=sys.stderr)

    try:
        url, key = _connection(args)
        api = Api(url, key)
        try:
            code: int = args.handler(api, args)
        finally:
            api.close()
        sys.stdout.flush()
        return code
    except Usage as exc:
        args.usage.error(str(exc))  # prints the usage and exits 2
    except ApiError as exc:
        for line in exc.lines():
            say(line)
    except httpx.TimeoutException:
        say(f"{url} did not answer in time")
    except httpx.TransportError as exc:
        say(f"cannot reach {url}: {exc or type(exc).__name__}")
    except httpx.InvalidURL as exc:
        say(f"{url} is not a usable address: {exc}")
    except KeyboardInterrupt:
        say("interrupted")
        return INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return BROKEN_PIPE
    return USAGE


def main(argv: list[str]) -> int:
    """`edithook edit …` or `edithook tasks …` alone, with nothing of the service loaded."""
    parser = argparse.ArgumentParser(prog="edithook")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))
