"""`edithook edit` and `edithook tasks` as real processes against the suite's running service,
its worker and the simulator, on a terminal (a pty) and off one (pipes)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import shlex
import signal
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.servers import bind
from tests.conftest import Caller, Service
from tests.helpers import REPO, own_task_ids, wait_for_task
from tests.images import encoded

EDITHOOK = [sys.executable, "-m", "app.cli"]
# The simulator serves example.com inputs itself (evolink_simulator/inputs.py).
INPUT_URL = "https://cdn.example.com/in/street-800x600.png"
# Loaded by the service, never by the client (tests/unit/test_cli_client.py reads the source).
HEAVY = ("sqlalchemy", "procrastinate", "psycopg", "pydantic", "fastapi", "starlette", "structlog")


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def _env(service: Service | None, caller: Caller | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDITHOOK_", "NO_COLOR"))}
    if service is not None:
        env["EDITHOOK_URL"] = service.url
    if caller is not None:
        env["EDITHOOK_KEY"] = caller.key
    return {**env, **extra}


async def edithook(*args: str, env: dict[str, str], cwd: Path | None = None) -> Ran:
    """Run `edithook ARGS` with pipes (not a terminal), in the test's event loop's time."""
    process = await asyncio.create_subprocess_exec(
        *EDITHOOK, *args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def on_a_terminal(*args: str, env: dict[str, str], cwd: Path) -> Ran:
    """Run `edithook ARGS` with stdout and stderr on a pty of 120 columns; `out` is all it
    wrote there, escape sequences included."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = await asyncio.create_subprocess_exec(
        *EDITHOOK, *args, env={**env, "TERM": "xterm-256color"}, cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
    )  # fmt: skip
    os.close(follower)

    def read_all() -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process has closed its side
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    try:
        async with asyncio.timeout(60):
            out = await asyncio.to_thread(read_all)
            code = await process.wait()
    finally:
        os.close(leader)
    return Ran(code, out.decode(errors="replace"), "")


def names(folder: Path) -> list[str]:
    """The names in `folder`, sorted."""
    return sorted(path.name for path in folder.iterdir())


async def result_bytes(api: httpx.AsyncClient, task_id: str, index: int) -> bytes:
    response = await api.get(f"/v1/tasks/{task_id}/results/{index}")
    assert response.status_code == 200, response.text
    return response.content


async def test_edit_with_a_url_saves_each_result_named_by_task_and_index(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Off a terminal: one line per status change, then each saved file, named
    `<task id>-<index>.png`, holding exactly the bytes the API serves for that result."""
    ran = await edithook(
        "edit", INPUT_URL, "--prompt", "make it snow", "-n", "2", "--out", "out",
        env=_env(service, caller), cwd=tmp_path,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.err == ""
    (task_id,) = await own_task_ids(api)
    statuses = [line.removeprefix(f"{task_id} ") for line in ran.lines[:-2]]
    assert statuses[0] == "queued"
    assert statuses[-1] == "completed (2 results)"
    assert len(statuses) == len(set(statuses)), "one line per status change"
    assert ran.lines[-2:] == [f"saved out/{task_id}-0.png", f"saved out/{task_id}-1.png"]
    assert names(tmp_path / "out") == [
        f"{task_id}-0.png",
        f"{task_id}-1.png",
    ]
    for index in (0, 1):
        saved = (tmp_path / "out" / f"{task_id}-{index}.png").read_bytes()
        assert saved == await result_bytes(api, task_id, index)


async def test_edit_uploads_a_local_file_and_sends_it_after_the_urls(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A local file is uploaded and named in `image_ids` (after the URLs); the simulator
    fetches it through edithook's signed link and the edit completes and is saved."""
    (tmp_path / "photo.jpg").write_bytes(encoded("JPEG", 640, 480))
    ran = await edithook(
        "edit", "photo.jpg", INPUT_URL, "--prompt", "make it snow",
        env=_env(service, caller), cwd=tmp_path,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    (task_id,) = await own_task_ids(api)
    task = (await api.get(f"/v1/tasks/{task_id}")).json()
    assert task["request"]["image_urls"] == [INPUT_URL]
    (upload_id,) = task["request"]["image_ids"]
    assert ran.lines[0] == f"uploaded photo.jpg as {upload_id}"
    saved = (tmp_path / f"{task_id}-0.png").read_bytes()
    assert saved == await result_bytes(api, task_id, 0)


async def test_a_failed_task_exits_1_with_its_code_and_message(
    service: Service, caller: Caller, tmp_path: Path
) -> None:
    ran = await edithook(
        "edit", INPUT_URL, "--prompt", "snow [sim:fail=content_policy_violation]",
        env=_env(service, caller), cwd=tmp_path,
    )  # fmt: skip
    assert ran.code == 1, ran.err
    (line,) = ran.err.splitlines()
    assert line.startswith("edithook edit: task ")
    reason = "Content policy violation. Change the prompt or the images."
    assert line.endswith(f" failed: content_policy_violation: {reason}")
    assert names(tmp_path) == []


async def test_a_cancelled_task_exits_1(service: Service, caller: Caller, tmp_path: Path) -> None:
    ran = await edithook(
        "edit", INPUT_URL, "--prompt", "snow [sim:cancel]", env=_env(service, caller), cwd=tmp_path
    )
    assert ran.code == 1, ran.err
    assert " cancelled: " in ran.err


async def test_results_that_could_not_be_kept_exit_1_naming_each(
    service: Service, caller: Caller, sim: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A completed task whose images could not be copied (EvoLink no longer knows the task
    when the copy confirms its links): exit 1, each result named with the reason."""
    fault = {"endpoint": "get", "status": 404, "message": "task not found"}
    assert (await sim.post("/_sim/faults", json=fault)).status_code == 200
    ran = await edithook(
        "edit", INPUT_URL, "--prompt", "make it snow", "-n", "2",
        env=_env(service, caller), cwd=tmp_path,
    )  # fmt: skip
    assert ran.code == 1, ran.err
    task_id = ran.lines[0].split()[0]
    assert ran.lines[-1] == f"{task_id} completed (2 results)"
    problems = ran.err.splitlines()
    assert [line.split(":")[:2] for line in problems] == [
        ["edithook edit", f" task {task_id}"],
        ["edithook edit", f" task {task_id}"],
    ]
    assert " result 0 was not kept: " in problems[0]
    assert " result 1 was not kept: " in problems[1]
    assert names(tmp_path) == []


async def test_bad_usage_and_refused_requests_exit_2(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Too many images, a missing file, no address, a request the API refuses (its problem
    told field by field), a wrong key: exit 2, a message, no traceback, no task made."""
    env = _env(service, caller)
    cases = [
        (["edit", *[INPUT_URL] * 4, "--prompt", "x"], env, "at most 3 images, 4 given"),
        (["edit", "nope.png", "--prompt", "x"], env, "nope.png: no such file"),
        (["edit", INPUT_URL], env, "the following arguments are required: --prompt"),
        (["tasks", "list"], _env(None, caller), "set EDITHOOK_URL"),
        (
            ["edit", INPUT_URL, "--prompt", "x", "-n", "2", "--size", "1024x1024"],
            env,
            "edithook edit:   size: is only allowed when n is 1",
        ),
        (["tasks", "list", "--key", "not-a-key"], env, "edithook tasks list: Unauthorized (401)"),
        (["tasks", "show", "no-such-task"], env, "edithook tasks show: Not found (404)"),
    ]
    for argv, case_env, said in cases:
        ran = await edithook(*argv, env=case_env, cwd=tmp_path)
        assert ran.code == 2, (argv, ran.err)
        assert said in ran.err, (argv, ran.err)
        assert "Traceback" not in ran.err
    assert await own_task_ids(api) == set()


async def test_json_prints_the_task_as_the_api_returns_it_and_progress_on_stderr(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    ran = await edithook(
        "edit", INPUT_URL, "--prompt", "make it snow", "--json",
        env=_env(service, caller), cwd=tmp_path,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    task = json.loads(ran.out)
    assert task == (await api.get(f"/v1/tasks/{task['id']}")).json()
    assert task["status"] == "completed"
    assert f"{task['id']} queued" in ran.err
    assert f"saved {task['id']}-0.png" in ran.err


async def test_no_wait_prints_the_task_id_and_leaves_it_running(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    env = _env(service, caller)
    ran = await edithook("edit", INPUT_URL, "--prompt", "snow", "--no-wait", env=env, cwd=tmp_path)
    assert ran.code == 0, ran.err
    task_id = ran.out.strip()
    assert ran.out == f"{task_id}\n"
    assert await own_task_ids(api) == {task_id}
    as_json = await edithook(
        "edit", INPUT_URL, "--prompt", "snow", "--no-wait", "--json", env=env, cwd=tmp_path
    )
    assert as_json.code == 0, as_json.err
    assert json.loads(as_json.out)["status"] == "queued"
    for made in (task_id, json.loads(as_json.out)["id"]):
        await wait_for_task(api, made, {"completed"})
    assert names(tmp_path) == []


async def test_tasks_list_show_and_events_read_the_callers_tasks(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Plain columns off a terminal, and with --json exactly what the API answers."""
    env = _env(service, caller)
    made = await edithook(
        "edit", INPUT_URL, "--prompt", "make it snow", "--json", env=env, cwd=tmp_path
    )
    task_id = json.loads(made.out)["id"]

    listed = await edithook("tasks", "list", env=env)
    assert listed.code == 0, listed.err
    assert listed.lines[0].split() == ["ID", "STATUS", "PROGRESS", "RESULTS", "CREATED", "PROMPT"]
    assert listed.lines[1].split()[:4] == [task_id, "completed", "100%", "1"]
    assert listed.lines[1].endswith("make it snow")
    as_json = await edithook("tasks", "list", "--status", "completed", "--json", env=env)
    assert json.loads(as_json.out) == (await api.get("/v1/tasks?status=completed")).json()
    none = await edithook("tasks", "list", "--status", "failed", env=env)
    assert none.lines == ["ID  STATUS  PROGRESS  RESULTS  CREATED  PROMPT"]

    shown = await edithook("tasks", "show", task_id, env=env)
    assert shown.code == 0, shown.err
    assert f"id: {task_id}" in shown.lines
    assert "status: completed" in shown.lines
    assert f"images: {INPUT_URL}" in shown.lines
    shown_json = await edithook("tasks", "show", task_id, "--json", env=env)
    assert json.loads(shown_json.out) == (await api.get(f"/v1/tasks/{task_id}")).json()

    history = await edithook("tasks", "events", task_id, env=env)
    assert history.code == 0, history.err
    assert history.lines[0].split()[:5] == ["ID", "TIME", "KIND", "OUTCOME", "CHANGE"]
    assert "- → queued" in history.lines[1]
    history_json = await edithook("tasks", "events", task_id, "--json", env=env)
    events = (await api.get(f"/v1/tasks/{task_id}/events")).json()
    assert json.loads(history_json.out) == events
    assert len(history.lines) == 1 + len(events["items"])


async def test_on_a_terminal_edit_shows_a_live_progress_line(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """On a pty, rich draws the progress line (the cursor hidden while it runs, a bar, the
    percentage) and ends on the completed task; the file is saved as off a terminal."""
    ran = await on_a_terminal(
        "edit", INPUT_URL, "--prompt", "snow [sim:slow=1]", env=_env(service, caller), cwd=tmp_path
    )
    assert ran.code == 0, ran.out
    (task_id,) = await own_task_ids(api)
    assert "\x1b[?25l" in ran.out, "the cursor is hidden while the line is live"
    assert "━" in ran.out
    assert f"task {task_id}" in ran.out
    assert "100%" in ran.out
    assert f"{task_id} queued" not in ran.out, "no plain lines on a terminal"
    assert f"saved {task_id}-0.png" in ran.out
    assert (tmp_path / f"{task_id}-0.png").read_bytes() == await result_bytes(api, task_id, 0)


async def test_on_a_terminal_tasks_are_a_table(
    service: Service, caller: Caller, tmp_path: Path
) -> None:
    env = _env(service, caller)
    made = await edithook("edit", INPUT_URL, "--prompt", "snow", "--no-wait", env=env, cwd=tmp_path)
    task_id = made.out.strip()
    ran = await on_a_terminal("tasks", "list", env=env, cwd=tmp_path)
    assert ran.code == 0, ran.out
    assert "\x1b[1m" in ran.out, "bold headers"
    assert task_id in ran.out, "ids are shown whole"


async def test_ctrl_c_while_waiting_exits_130_and_the_task_goes_on(
    service: Service, caller: Caller, api: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    """Interrupted while the task is with EvoLink: exit 130, a line naming the task, which
    is still in flight and ends normally afterwards."""
    process = await asyncio.create_subprocess_exec(
        *EDITHOOK, "edit", INPUT_URL, "--prompt", "snow [sim:hold]",
        env=_env(service, caller), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            while not (line := (await process.stdout.readline()).decode()).endswith(" pending\n"):
                assert line, "the output ended before the task was submitted"
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    task_id = line.split()[0]
    assert process.returncode == 130
    assert err.decode() == (
        f"edithook edit: interrupted; task {task_id} goes on (edithook tasks show {task_id})\n"
    )
    task = (await api.get(f"/v1/tasks/{task_id}")).json()
    assert task["status"] == "pending"
    ended = await sim.post(f"/_sim/tasks/{task['provider_task_id']}/complete")
    assert ended.status_code == 200, ended.text
    await wait_for_task(api, task_id, {"completed"})


async def test_a_reader_that_goes_away_is_no_traceback(
    service: Service, caller: Caller, api: httpx.AsyncClient
) -> None:
    """`edithook tasks list | head` with head gone before the list is written: exit 141
    (as a process killed by SIGPIPE), nothing on stderr."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        process = await asyncio.create_subprocess_exec(
            *EDITHOOK, "tasks", "list", env=_env(service, caller),
            stdout=writer, stderr=subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(writer)
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 141
    assert err.decode() == ""


async def test_an_unreachable_server_is_one_line_and_exit_2() -> None:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    ran = await edithook(
        "tasks", "list", env=_env(None, None, EDITHOOK_URL=f"http://127.0.0.1:{port}",
                                  EDITHOOK_KEY="k"),
    )  # fmt: skip
    assert ran.code == 2
    assert ran.out == ""
    (line,) = ran.err.splitlines()
    assert line.startswith(f"edithook tasks list: cannot reach http://127.0.0.1:{port}: ")


async def test_the_client_starts_without_loading_the_service() -> None:
    """What `edithook tasks list` imports, as Python reports it: none of the service's
    libraries."""
    ran = await edithook(
        "tasks", "list", env=_env(None, None, EDITHOOK_URL="http://127.0.0.1:9", EDITHOOK_KEY="k",
                                  PYTHONPROFILEIMPORTTIME="1"),
    )  # fmt: skip
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in ran.err.splitlines()
        if line.startswith("import time:")
    }
    assert "httpx" in imported, "the report was read"
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def readme_commands() -> list[list[str]]:
    """The `edithook` commands of the README's "From a terminal" block, split as sh would."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## From a terminal") :]
    block = block[block.index("```sh\n") + 6 :]
    block = block[: block.index("```")]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("edithook ")]


async def test_the_readme_session_runs_as_written(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Each command of the README's terminal block succeeds; `<id>` is the task it made."""
    commands = readme_commands()
    assert [argv[:2] for argv in commands] == [
        ["edithook", "edit"],
        ["edithook", "tasks"],
        ["edithook", "tasks"],
        ["edithook", "tasks"],
    ]
    (tmp_path / "photo.png").write_bytes(encoded("PNG", 800, 600))
    task_id = ""
    for argv in commands:
        argv = [task_id if word == "<id>" else word for word in argv[1:]]
        ran = await edithook(*argv, env=_env(service, caller), cwd=tmp_path)
        assert ran.code == 0, (argv, ran.err)
        if argv[0] == "edit":
            (task_id,) = await own_task_ids(api)
        elif argv[1] in ("list", "show"):
            assert task_id in ran.out
        else:
            assert "pending → completed" in ran.out
    assert names(tmp_path / "results") == [f"{task_id}-0.png", f"{task_id}-1.png"]
