"""The README's "Uploading images" session, run as written with curl, answers as it says."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from tests.conftest import Caller, Service
from tests.images import encoded
from tests.integration.test_readme import _matches, _run_curl, curl_session

HEADING = "## Uploading images"


def test_the_uploads_section_has_its_session() -> None:
    """The parser finds the section's steps: an upload, a task naming it, a raw upload."""
    steps = curl_session(HEADING)
    assert [step.status for step in steps] == [201, 202, 201]
    assert "image_ids" in steps[1].command


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_uploads_session_answers_as_documented(
    service: Service, caller: Caller, tmp_path: Path
) -> None:
    """Upload a file, edit it by its id (the simulator fetching it), upload raw bytes."""
    (tmp_path / "photo.png").write_bytes(encoded("PNG", 1024, 768))
    (tmp_path / "photo.jpg").write_bytes(encoded("JPEG", 1024, 768))
    address = service.url.removeprefix("http://")
    upload_id = ""
    for step in curl_session(HEADING):
        command = step.command.replace("localhost:8000", address)
        command = command.replace("dev-key", caller.key).replace("<id>", upload_id)
        status, _, body = await _run_curl(shlex.split(command), tmp_path)
        assert status == step.status, (step.command, body)
        answer = json.loads(body)
        upload_id = upload_id or answer["id"]
        assert step.body is not None
        for key, expected in step.body.items():
            assert _matches(expected, answer.get(key)), (step.command, key, answer.get(key))
