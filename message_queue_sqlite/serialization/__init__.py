"""How arguments and results become text in storage: JSON, never pickle by default.

JSON keeps queue files readable by any tool and never runs code on load. Arguments that
JSON cannot carry (a lock, a socket, an open file) belong to cache mode instead.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode
_decode = json.loads
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_make_c_scanner = getattr(json.scanner, "c_make_scanner", None)


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


if _make_c_encoder is not None:
    _encoders = threading.local()  # one C encoder per thread: its circular-reference marks are per call

    def _encode(value: Any) -> str:  # noqa: F811 - the same encoding, without JSONEncoder's layers
        """``_encode`` above, calling the C encoder directly: a send or a result is encoded once
        per task, and the Python layers of ``JSONEncoder.encode`` cost as much as the encoding."""
        try:
            encoder = _encoders.encoder
        except AttributeError:
            encoder = _encoders.encoder = _make_c_encoder(
                {}, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, True)
        try:
            return "".join(encoder(value, 0))
        except BaseException:
            del _encoders.encoder  # a failed call may leave marks behind
            raise

if _make_c_scanner is not None:
    _scan = _make_c_scanner(json.JSONDecoder())

    def _decode(text: str) -> Any:  # noqa: F811 - json.loads, without its two whitespace regexes
        """What this package stores has no surrounding whitespace: the C scanner alone reads it
        (four times faster per task); anything else, or an error, goes through json.loads."""
        try:
            value, end = _scan(text, 0)
        except StopIteration:
            return json.loads(text)  # raises the proper JSONDecodeError
        return value if end == len(text) else json.loads(text)


NESTING_SCAN_LIMIT = 1_000_000  # values looked at, at most, to say how deep an argument is nested


def _nesting_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and dicts, measured without recursion (the value is
    one that recursion could not encode); a lower bound past ``NESTING_SCAN_LIMIT`` values."""
    deepest, seen = 0, 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack and seen < NESTING_SCAN_LIMIT:
        item, depth = stack.pop()
        seen += 1
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(what: str, value: Any) -> TypeError:
    """The documented TypeError for a value nested deeper than the encoder can recurse (it
    raised RecursionError), naming the depth and the limit."""
    return TypeError(
        f"{what} is nested {_nesting_depth(value)} levels deep, deeper than JSON storage can encode "
        f"(about {sys.getrecursionlimit()} levels, Python's recursion limit); flatten it, or store "
        "the structure elsewhere (a file, a database) and pass a reference to it")


def dumps_args(task_name: str, args: Any) -> str:
    """Encode a task's keyword arguments; the error names the argument that cannot be stored."""
    if not args and type(args) is dict:
        return "{}"
    if not isinstance(args, dict):
        raise TypeError(
            f"arguments of task {task_name!r} must be a dict of keyword arguments, "
            f"got {type(args).__name__}: {args!r}"
        )
    try:
        return _encode(args)
    except RecursionError:
        key, value = max(args.items(), key=lambda item: _nesting_depth(item[1]))
        raise _too_deep(f"argument {key!r} of task {task_name!r}", value) from None
    except (TypeError, ValueError) as exc:
        for key, value in args.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"argument names of task {task_name!r} must be strings, got {key!r}"
                ) from None
            try:
                _encode(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"argument {key!r} of task {task_name!r} cannot be stored as JSON "
                    f"({type(value).__name__}: {exc}); pass JSON-compatible values, or send "
                    "with use_cache=True to keep the arguments in this process's memory (then only "
                    "this process's own workers can run it, never a CLI worker)"
                ) from None
        raise TypeError(f"arguments of task {task_name!r} cannot be stored as JSON: {exc}") from None


def loads_args(text: str) -> dict[str, Any]:
    return {} if text == "{}" else _decode(text)


def dumps_call(task_name: str, args: tuple[Any, ...], kwargs: Any) -> str:
    """A send's arguments: the keyword dict alone (as the original stored them), or
    ``[positional, keywords]`` when there are positional ones (an array is never a dict, so
    the two forms cannot be confused)."""
    keywords = dumps_args(task_name, kwargs)
    if not args:
        return keywords
    try:
        positional = _encode(list(args))
    except RecursionError:
        index = max(range(len(args)), key=lambda i: _nesting_depth(args[i]))
        raise _too_deep(f"positional argument {index} of task {task_name!r}", args[index]) from None
    except (TypeError, ValueError) as exc:
        for index, value in enumerate(args):
            try:
                _encode(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"positional argument {index} of task {task_name!r} cannot be stored as JSON "
                    f"({type(value).__name__}: {exc}); pass JSON-compatible values, or send with "
                    "use_cache=True (then only this process's own workers can run it)") from None
        raise TypeError(f"arguments of task {task_name!r} cannot be stored as JSON: {exc}") from None
    return f"[{positional},{keywords}]"


def loads_call(text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(positional, keywords)`` from what ``dumps_call`` stored."""
    if text == "{}":
        return (), {}
    value = _decode(text)
    if type(value) is list:
        return tuple(value[0]), value[1]
    return (), value


def dumps_result(value: Any) -> str:
    """Encode a return value; TypeError says why when it cannot be stored."""
    if value is None:
        return "null"
    try:
        return _encode(value)
    except RecursionError:
        raise _too_deep(f"the task's return value ({type(value).__name__})", value) from None
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the task's return value ({type(value).__name__}) cannot be stored as JSON: {exc}"
        ) from None


def loads_result(text: str | None) -> Any:
    return None if text is None or text == "null" else _decode(text)
