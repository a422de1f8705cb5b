"""What travels between the registry and its workers, defined once: an attempt handed out,
the outcome that comes back, the codecs for arguments and return values, and the constants
both sides agree on. The bottom layer: it imports nothing of raybeam's."""

from __future__ import annotations

import base64
import dataclasses
import json
import operator
from typing import Any, TypedDict, cast

import cloudpickle

#: seconds an attempt runs before the registry hears that it started (status RUNNING)
START_REPORT_DELAY = 0.1


@dataclasses.dataclass
class Attempt:
    """One submission of a task, as the registry hands it to a worker."""

    task_id: str
    queue: str
    run: str
    attempt: int
    payload: str
    callback_url: str | None
    timeout: int
    storage_url: str

    def fields(self) -> list[Any]:
        """The attempt as plain values, which Ray sends as they are. A list, not a tuple:
        Ray's encoder pickles each tuple on its own (a pack of 200 attempts was 200 pickles
        in the registry and as many loads in the worker)."""
        return list(_ATTEMPT_VALUES(self))


_ATTEMPT_VALUES = operator.attrgetter(*(f.name for f in dataclasses.fields(Attempt)))


class Outcome(TypedDict):
    """How an attempt ended, as a worker (or the dispatcher, for a system failure) reports it.

    A TypedDict, so it crosses Ray as a plain dict at no pickling cost."""

    ok: bool
    #: the return value when it is JSON, else None (see `result_blob`)
    result: Any
    #: base64 of the pickled return value when it is not JSON
    result_blob: str | None
    #: where a return value over LARGE_RESULT was stored instead (then both above are None)
    result_key: str | None
    #: the traceback or system failure; None when ok
    error: str | None
    retryable: bool
    #: outputs saved during the attempt: dicts of id, name, key, size
    outputs: list[dict[str, Any]]
    #: where it ran (Ray worker or actor id); None when unknown
    container_id: str | None
    #: unix seconds the attempt began; None when it never reported
    started_at: float | None
    #: seconds the handler ran; None when unknown
    duration: float | None
    #: `duration` less the time its thread waited for a CPU (what packing is decided on)
    busy: float | None
    #: the last value the handler passed to context.progress(); None when none
    progress: Any


#: an outcome's keys, in order: a pack returns each outcome as the list of its values (Ray
#: decodes a list of 12 values in an eighth of the time it takes for the same dict)
OUTCOME_KEYS: tuple[str, ...] = tuple(Outcome.__annotations__)


def outcome_values(outcome: Outcome) -> list[Any]:
    plain = cast(dict[str, Any], outcome)
    return [plain[key] for key in OUTCOME_KEYS]


def outcome_from(values: list[Any]) -> Outcome:
    return cast(Outcome, dict(zip(OUTCOME_KEYS, values, strict=True)))


def succeeded(value: Any, outputs: list[dict[str, Any]]) -> Outcome:
    result, blob = encode_result(value)
    return Outcome(
        ok=True, result=result, result_blob=blob, result_key=None, error=None, retryable=False,
        outputs=outputs, container_id=None, started_at=None, duration=None, busy=None,
        progress=None,
    )  # fmt: skip


def failed(error: str, retryable: bool, outputs: list[dict[str, Any]] | None = None) -> Outcome:
    return Outcome(
        ok=False, result=None, result_blob=None, result_key=None, error=error, retryable=retryable,
        outputs=list(outputs or []), container_id=None, started_at=None, duration=None,
        busy=None, progress=None,
    )  # fmt: skip


#: SPEC §11: a return value larger than this (as JSON, or pickled) is stored beside the
#: outputs, not in the record
LARGE_RESULT = 64 * 1024
#: the file names a large return value is stored under, in its task's output folder
RESULT_JSON, RESULT_BLOB = "result.json", "result.blob"


def large_result(outcome: Outcome) -> tuple[str, bytes] | None:
    """The file name and content to store a large return value under; None when small."""
    if outcome["result_blob"] is not None:
        blob = outcome["result_blob"].encode()
        return (RESULT_BLOB, blob) if len(blob) > LARGE_RESULT else None
    if outcome["result"] is None or isinstance(outcome["result"], (bool, int, float)):
        return None
    text = json.dumps(outcome["result"], separators=(",", ":")).encode()
    return (RESULT_JSON, text) if len(text) > LARGE_RESULT else None


def read_large_result(key: str, data: bytes) -> tuple[Any, str | None]:
    """(result, result_blob) from a stored large return value."""
    if key.endswith(RESULT_BLOB):
        return None, data.decode()
    return json.loads(data), None


def encode_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return base64.b64encode(cloudpickle.dumps((args, kwargs))).decode()


def decode_payload(payload: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = cloudpickle.loads(base64.b64decode(payload))
    return tuple(args), dict(kwargs)


def encode_result(value: Any) -> tuple[Any, str | None]:
    """The value as JSON when it is JSON, else None plus the pickled value."""
    try:
        json.dumps(value, allow_nan=False)
        return value, None
    except (TypeError, ValueError):
        return None, base64.b64encode(cloudpickle.dumps(value)).decode()


def decode_result(result: Any, blob: str | None) -> Any:
    if blob is not None:
        return cloudpickle.loads(base64.b64decode(blob))
    return result
