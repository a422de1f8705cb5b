"""Stored JSON: orjson's output is what the standard library would store, and it falls back."""

from __future__ import annotations

import json

import pytest

from raybeam import codec
from raybeam.record import TaskRecord, TaskSpec, TaskStatus

pytestmark = pytest.mark.timeout(30)


def test_a_record_is_stored_as_its_fields() -> None:
    rec = TaskRecord(id="a", queue="q", spec=TaskSpec(function="f"), status=TaskStatus.FAILED)
    rec.result = {"nested": [1, 2.5, None, "é"]}
    stored = codec.loads(codec.dumps(rec))
    assert stored == json.loads(json.dumps(rec.to_json()))
    assert TaskRecord.from_json(stored) == rec


def test_what_orjson_refuses_goes_through_the_standard_library() -> None:
    value = {"big": 2**70, 1: "int key", "t": (1, 2)}
    assert codec.loads(codec.dumps(value)) == {"big": 2**70, "1": "int key", "t": [1, 2]}
    assert codec.loads(codec.dumps({1: "a"})) == {"1": "a"}
    with pytest.raises(ValueError):
        codec.loads("{not json")
    with pytest.raises(TypeError):
        codec.dumps({"x": object()})


def test_the_fallback_writes_what_orjson_reads_back() -> None:
    # NaN beside an integer orjson refuses: null, as orjson itself writes NaN
    value = {"big": 2**70, "nan": float("nan"), "deep": [float("inf"), 1.5]}
    assert codec.loads(codec.dumps(value)) == {"big": 2**70, "nan": None, "deep": [None, 1.5]}
    assert codec.loads(codec.dumps({"nan": float("nan")})) == {"nan": None}
    # one refused entry of a snapshot chunk goes alone through the standard library
    body = codec.dumps_each([{"a": 1}, {"b": 2**70}, {"c": "é"}])
    assert codec.loads(b"[" + body + b"]") == [{"a": 1}, {"b": 2**70}, {"c": "é"}]
    assert codec.dumps_each([{"a": 1}]) == b'{"a":1}'


def test_a_batch_line_is_one_array_and_a_refused_entry_goes_alone_to_the_fallback() -> None:
    entries = [("task", "a", {1: "x"}), ("task", "b", 2**70), ("payload", "c", "é")]
    line = codec.batch_line(entries)
    assert line.endswith(b"]\n") and line.count(b"\n") == 1
    assert codec.loads(line) == [
        ["task", "a", {"1": "x"}],
        ["task", "b", 2**70],
        ["payload", "c", "é"],
    ]
    assert codec.batch_line([("t", "k", None)]) == b'[["t","k",null]]\n'


def test_a_fragment_handed_out_before_the_cache_filled_still_encodes_in_the_fallback() -> None:
    specs = [TaskSpec(function=f"f{i}") for i in range(codec.FROZEN_CACHE + 10)]
    first = codec.frozen_json(specs[0])
    for spec in specs[1:]:  # the cache fills and starts again while `first` waits
        codec.frozen_json(spec)
    body = codec.dumps_each([{"d": [first, 2**70]}])  # orjson refuses 2**70: the fallback
    assert codec.loads(b"[" + body + b"]")[0]["d"] == [
        {**codec.loads(codec.dumps(specs[0]))},
        2**70,
    ]
