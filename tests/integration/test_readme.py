"""The README's curl session, run as written against a live service, answers as it says."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import REPO

if TYPE_CHECKING:
    from tests.conftest import Caller, Service

README = REPO / "README.md"
ELLIPSIS = "…"


@dataclass
class Step:
    """One curl command of the README and the answer it documents."""

    command: str
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def curl_session(heading: str = "## Trying it with curl") -> list[Step]:
    """The steps of the first `sh` block under `heading`: each command, then
    `# → STATUS [json]` and `#   Header: value` lines."""
    text = README.read_text()
    block = text[text.index(heading) :]
    block = block[block.index("```sh\n") + 6 :]
    block = block[: block.index("```")]
    steps: list[Step] = []
    command: list[str] = []
    for line in block.splitlines():
        answer = re.fullmatch(r"# → (\d{3})(.*)", line)
        header = re.fullmatch(r"#   ([A-Za-z-]+): (.*)", line)
        if answer:
            rest = answer[2].strip()
            body = _expected_json(rest) if rest.startswith("{") else None
            steps.append(Step(" ".join(command), int(answer[1]), body))
            command = []
        elif header:
            steps[-1].headers[header[1].lower()] = header[2]
        elif line.strip():
            command.append(line.split("  #")[0].rstrip().removesuffix("\\"))
    return steps


def _expected_json(shown: str) -> dict[str, Any]:
    # `{"a": 1, …}` is JSON once the trailing "…" (the rest of the object) is dropped.
    document: dict[str, Any] = json.loads(shown.replace(f", {ELLIPSIS}}}", "}"))
    return document


def _matches(expected: Any, actual: Any) -> bool:
    if expected == ELLIPSIS:
        return True
    if isinstance(expected, str) and expected.endswith(ELLIPSIS):
        return isinstance(actual, str) and actual.startswith(expected[:-1])
    return bool(expected == actual)


async def _run_curl(argv: list[str], cwd: Path) -> tuple[int, dict[str, str], bytes]:
    headers_file = cwd / "headers.txt"
    process = await asyncio.create_subprocess_exec(
        *argv, "-sS", "-D", str(headers_file), cwd=cwd, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0, f"curl failed: {argv}"
    lines = headers_file.read_text().splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers, stdout


def test_the_readme_documents_a_session_of_several_steps() -> None:
    """The parser finds the README's steps, so the test below cannot pass by checking nothing."""
    steps = curl_session()
    assert len(steps) >= 5
    assert steps[0].body is not None
    assert steps[0].body["status"] == "queued"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_readme_curl_session_answers_as_documented(
    service: Service, caller: Caller, tmp_path: Path
) -> None:
    """Every command of the README, run as written, answers the status, fields and headers shown."""
    address = service.url.removeprefix("http://")
    task_id = ""
    for step in curl_session():
        command = step.command.replace("localhost:8000", address)
        command = command.replace("dev-key", caller.key).replace("<id>", task_id)
        status, headers, body = await _run_curl(shlex.split(command), tmp_path)
        assert status == step.status, (step.command, body)
        if step.body is not None:
            answer = json.loads(body)
            task_id = task_id or answer.get("id", "")
            for key, expected in step.body.items():
                assert _matches(expected, answer.get(key)), (step.command, key, answer.get(key))
        for name, expected in step.headers.items():
            assert headers.get(name) == expected.replace("<id>", task_id), (step.command, name)
        if "-o 0.png" in command:
            assert (tmp_path / "0.png").read_bytes().startswith(b"\x89PNG")
