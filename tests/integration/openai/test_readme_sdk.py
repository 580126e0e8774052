"""The README's OpenAI SDK example, run as written against the live service."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from PIL import Image

from tests.helpers import REPO
from tests.integration.openai.conftest import png

if TYPE_CHECKING:
    from tests.conftest import Caller, Service

README = REPO / "README.md"


def sdk_example() -> str:
    """The first `python` block of the README's section on the OpenAI SDK."""
    text = README.read_text()
    section = text[text.index("## Calling it with the OpenAI SDK") :]
    block = section[section.index("```python\n") + len("```python\n") :]
    return block[: block.index("```")]


async def test_the_readmes_sdk_example_edits_an_image(
    service: Service, caller: Caller, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Run in a process of its own, with the service's address and the test's key for the
    README's: it writes the edited image, and edithook's own fields reached the task."""
    code = sdk_example()
    assert 'base_url="http://localhost:8000/v1"' in code
    assert 'api_key="dev-key"' in code
    code = code.replace("http://localhost:8000/v1", f"{service.url}/v1").replace(
        '"dev-key"', repr(caller.key)
    )
    (tmp_path / "in.png").write_bytes(png())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, output.decode(errors="replace")
    with Image.open(tmp_path / "out.png") as image:
        assert image.format == "PNG"
    [task] = (await api.get("/v1/tasks", params={"limit": 1})).json()["items"]
    assert task["status"] == "completed"
    assert (task["request"]["seed"], task["request"]["negative_prompt"]) == (7, "blurry")
