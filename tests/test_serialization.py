"""Arguments and results are stored as compact JSON: the same text json.dumps writes."""

from __future__ import annotations

import json

import pytest

from message_queue_sqlite.serialization import dumps_args, dumps_result, loads_args, loads_result

VALUES = [None, True, 0, -7, 2**70, 1.5, float("inf"), "", "é \u2028 \"q\" \\ \n", [1, [2, {}]],
          {"a": {"b": [None, 1.25]}, "ü": "x"}]


@pytest.mark.parametrize("value", VALUES)
def test_results_are_written_as_json_dumps_writes_them(value):
    text = dumps_result(value)
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert loads_result(text) == value or value != value


def test_arguments_round_trip():
    args = {"n": 3, "name": "ü", "items": [1, 2.5, None]}
    assert loads_args(dumps_args("t", args)) == args


def test_values_json_cannot_carry_are_named():
    with pytest.raises(TypeError, match=r"argument 'lock' of task 't' cannot be stored as JSON"):
        dumps_args("t", {"n": 1, "lock": object()})
    with pytest.raises(TypeError, match="return value .set. cannot be stored as JSON"):
        dumps_result({1, 2})
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="return value .list. cannot be stored as JSON.*Circular"):
        dumps_result(loop)


def test_a_failed_encoding_leaves_nothing_behind_for_the_next():
    """The encoder is kept per thread; a failure midway must not leave the value marked as
    "being encoded", or encoding it again once fixed would report a circular reference."""
    value = {"a": [object()]}
    with pytest.raises(TypeError):
        dumps_result(value)
    value["a"] = [1]
    assert dumps_result(value) == '{"a":[1]}'


@pytest.mark.parametrize("text", [' {"a":1}', '{"a":1} ', "[1,2]\n", '{"a":', "nul", "1 2", ""])
def test_decoding_reads_what_json_loads_reads_and_fails_as_it_fails(text):
    try:
        expected = json.loads(text)
    except json.JSONDecodeError as exc:
        with pytest.raises(json.JSONDecodeError, match=exc.msg):
            loads_result(text)
        return
    assert loads_result(text) == expected
