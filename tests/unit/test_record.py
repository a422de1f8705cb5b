from __future__ import annotations

import dataclasses

import pytest

from raybeam import codec
from raybeam.record import (
    FINAL_STATUSES,
    STORED_FIELDS,
    TRANSITIONS,
    InvalidTransition,
    TaskRecord,
    TaskSpec,
    TaskStatus,
    check_transition,
    iso,
)

S = TaskStatus


def record() -> TaskRecord:
    return TaskRecord(id="t1", queue="q", spec=TaskSpec(function="f"), created_at=100.0)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.COMPLETE),
        (S.RUNNING, S.RETRY),
        (S.RETRY, S.RUNNING),
        (S.RUNNING, S.FAILED),
        (S.PENDING, S.CANCELLED),
        (S.RUNNING, S.CANCELLED),
        (S.RETRY, S.CANCELLED),
        (S.RUNNING, S.TIMEOUT),
        (S.PENDING, S.EXPIRED),
    ],
)
def test_lifecycle_allows_the_spec_transitions(old: TaskStatus, new: TaskStatus) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.PENDING, S.COMPLETE),
        (S.PENDING, S.TIMEOUT),
        (S.RUNNING, S.EXPIRED),
        (S.RETRY, S.COMPLETE),
        (S.RUNNING, S.PENDING),
    ],
)
def test_lifecycle_refuses_other_transitions(old: TaskStatus, new: TaskStatus) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(old, new)


def test_final_statuses_never_change() -> None:
    for final in FINAL_STATUSES:
        assert TRANSITIONS[final] == frozenset()
        for new in TaskStatus:
            with pytest.raises(InvalidTransition):
                check_transition(final, new)


def test_transition_stamps_times() -> None:
    rec = record()
    rec.transition(S.RUNNING, now=101.0)
    rec.transition(S.COMPLETE, now=102.5)
    assert (rec.started_at, rec.ended_at, rec.updated_at) == (101.0, 102.5, 102.5)
    assert rec.history == [("PENDING", 100.0), ("RUNNING", 101.0), ("COMPLETE", 102.5)]


def test_record_round_trips_through_json() -> None:
    rec = record()
    rec.transition(S.RUNNING, now=101.0)
    rec.attempts = 1
    again = TaskRecord.from_json(rec.to_json())
    assert again == rec


def test_the_stored_form_round_trips_and_names_every_field() -> None:
    rec = record()
    rec.transition(S.RUNNING, now=101.0)
    rec.result, rec.outputs = {"k": [1, 2.5]}, [{"id": "o", "key": "k"}]
    [[_, _, stored]] = codec.loads(codec.batch_line([("task", rec.id, rec.stored())]))
    assert isinstance(stored, list) and stored[0] == {"function": "f", **_spec_defaults()}
    assert TaskRecord.from_json(stored) == rec
    assert sorted(STORED_FIELDS) == sorted(f.name for f in dataclasses.fields(TaskRecord))
    assert len(codec.dumps(rec.stored())) < 0.8 * len(codec.dumps(rec.to_json()))


def test_a_record_stored_before_a_field_was_added_gets_its_default() -> None:
    stored = codec.loads(codec.dumps(record().stored()))
    older = TaskRecord.from_json(stored[:-2])  # without progress_seq and next_attempt_at
    assert (older.progress_seq, older.next_attempt_at) == (0, None)
    with pytest.raises(ValueError, match="newer raybeam"):
        TaskRecord.from_json([*stored, "from the future"])


def test_records_read_with_one_table_share_their_spec() -> None:
    specs: dict[str, TaskSpec] = {}
    a, b = (TaskRecord.from_json(codec.loads(codec.dumps(record().stored())), specs) for _ in "ab")
    other = TaskRecord.from_json({**record().to_json(), "spec": {"function": "g"}}, specs)
    assert a.spec is b.spec and a.spec is not other.spec and len(specs) == 2


def test_a_stored_record_that_orjson_refuses_still_encodes() -> None:
    rec = record()
    rec.result = 2**70  # orjson refuses integers beyond 64 bits; the spec is a fragment
    assert TaskRecord.from_json(codec.loads(codec.dumps(rec.stored()))).result == 2**70


def _spec_defaults() -> dict[str, object]:
    spec = TaskSpec(function="f")
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "function"}


def test_info_has_the_spec_shape() -> None:
    rec = record()
    info = rec.info([], {"active_containers": 0, "queue_depth": 1})
    assert list(info) == [
        "id", "queue", "status", "created_at", "started_at", "ended_at", "updated_at",
        "container_id", "attempts", "result", "failure_reason", "outputs", "stats",
        # SPEC §8
        "priority", "scheduled_for", "idempotency_key", "retry_of", "retried_as", "progress",
        "next_attempt_at",
    ]  # fmt: skip
    assert info["created_at"] == "1970-01-01T00:01:40Z"


def test_info_shows_the_webhook_when_the_task_has_a_callback() -> None:
    rec = TaskRecord(id="t", queue="q", spec=TaskSpec(function="f", callback_url="http://h/x"))
    info = rec.info([], {})
    assert info["webhook"] == {"url": "http://h/x", "delivered": False, "attempts": []}


def test_iso_is_utc_with_z() -> None:
    assert iso(0.25) == "1970-01-01T00:00:00.250000Z"
    assert iso(None) is None


def test_status_parse_accepts_names_and_rejects_others() -> None:
    assert TaskStatus.parse("complete") is S.COMPLETE
    assert TaskStatus.parse(S.FAILED) is S.FAILED
    with pytest.raises(ValueError, match="expected one of"):
        TaskStatus.parse("DONE")
