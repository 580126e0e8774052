"""The SQL of `max_in_flight` names the statuses that hold a slot as the vocabulary does."""

from __future__ import annotations

import re

from app.vocabulary import HOLDING_A_SLOT, TaskStatus
from tests.helpers import REPO

MIGRATION = next((REPO / "migrations" / "versions").glob("*_5d3f0b8e2c46_*.py"))


def test_every_status_list_of_the_limit_functions_is_the_vocabularys() -> None:
    """The claim, the dispatcher and the trigger count (and watch for leaving) exactly the
    statuses `HOLDING_A_SLOT` names: submitting, pending, processing."""
    lists = re.findall(r"status (?:NOT )?IN \(([^)]*)\)", MIGRATION.read_text())
    assert len(lists) >= 4, "the lists were found"
    wanted = {status.value for status in HOLDING_A_SLOT}
    for found in lists:
        assert {word.strip(" '") for word in found.split(",")} == wanted
    assert TaskStatus.QUEUED not in HOLDING_A_SLOT
