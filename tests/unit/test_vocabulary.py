"""One vocabulary: the API's schemas, the models' constraints and the SQL speak the enums."""

from __future__ import annotations

import re
from enum import StrEnum

import pytest
from pydantic import BaseModel

from app.models import Task, TaskEvent, TaskResult
from app.tasks.schemas import EventRead, ResultRead, TaskRead
from app.vocabulary import EventKind, EventOutcome, ResolvedBy, ResultStatus, TaskStatus
from tests.helpers import REPO

APP = REPO / "app"


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        (TaskRead, "resolved_by", ResolvedBy),
        (EventRead, "kind", EventKind),
        (EventRead, "outcome", EventOutcome),
        (ResultRead, "status", ResultStatus),
    ],
)
def test_a_schema_describes_every_value_its_field_may_take(
    model: type[BaseModel], field: str, words: type[StrEnum]
) -> None:
    """The document names each value a field can hold, in its enum and in its description."""
    description = model.model_fields[field].description or ""
    for word in words:
        assert re.search(rf"\b{word.value}\b", description), (field, word.value)
    schema = model.model_json_schema(mode="serialization")
    assert str(words.__name__) in schema["$defs"]
    assert set(schema["$defs"][words.__name__]["enum"]) == {word.value for word in words}


def test_task_statuses_are_typed_in_the_schema() -> None:
    """A task's status, and an event's from/to status, are TaskStatus in the document."""
    for model, field in (
        (TaskRead, "status"),
        (EventRead, "from_status"),
        (EventRead, "to_status"),
    ):
        annotation = str(model.model_fields[field].annotation)
        assert "TaskStatus" in annotation, (model, field)


@pytest.mark.parametrize(
    ("column", "words"),
    [
        (Task.status, TaskStatus),
        (Task.resolved_by, ResolvedBy),
        (TaskEvent.kind, EventKind),
        (TaskEvent.outcome, EventOutcome),
        (TaskEvent.from_status, TaskStatus),
        (TaskResult.status, ResultStatus),
    ],
)
def test_a_column_holds_its_enum_and_refuses_other_words(
    column: object, words: type[StrEnum]
) -> None:
    """The models read and write enums; a string outside the enum never reaches Postgres."""
    column_type = column.type  # type: ignore[attr-defined]
    assert column_type.enum is words
    first = next(iter(words))
    assert column_type.process_bind_param(first.value, None) == first.value
    assert column_type.process_result_value(first.value, None) is first
    with pytest.raises(ValueError, match="teleported"):
        column_type.process_bind_param("teleported", None)


# Two or more status words in a quoted SQL list: a status list written by hand.
HAND_WRITTEN_LIST = re.compile(
    r"'(?:queued|submitting|pending|processing|completed|failed|cancelled)'\s*,\s*'"
)


def test_no_sql_in_the_service_lists_statuses_by_hand() -> None:
    """SQL that needs a set of statuses takes it from app.vocabulary."""
    offenders = [
        str(path.relative_to(APP))
        for path in APP.rglob("*.py")
        if "simulator" not in path.parts and HAND_WRITTEN_LIST.search(path.read_text())
    ]
    assert offenders == []
