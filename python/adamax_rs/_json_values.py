"""JSON for checkpoint metadata, written exactly and read defensively.

Writing: numpy scalars (``np.float32(0.1)``, ``np.bool_(True)``, ``np.int64(3)``) are what
users put in hyperparameters and in their own values, so they become the plain JSON number or
boolean of the same value; any other ``numbers.Real`` (a ``fractions.Fraction``) becomes the
float64 a step would use. A value of a type with no JSON form (an object, a key that is not a
string, which JSON would silently turn into one) is a ``TypeError``, and a number JSON cannot
hold (NaN, infinity, one too large for a float64, an integer of more than
:data:`MAX_INT_DIGITS` digits) a ``ValueError``, each naming where it is.

Reading: ``json.loads`` alone accepts NaN and Infinity, integers of any length, a key given
twice (the last one silently wins) and nesting deep enough to exhaust the interpreter's
recursion limit. :func:`loads` refuses each of these with ``ValueError`` before building the
value, so a hostile file cannot raise anything else from here.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from typing import Any

import numpy as np

__all__ = ["MAX_DEPTH", "to_json_value", "dumps", "loads"]

#: The deepest nesting of lists and objects read or written.
MAX_DEPTH = 32
#: The most digits an integer may have: a 128-bit random seed has 39.
MAX_INT_DIGITS = 48

# A string, or an unterminated one up to the end of the text (with a lone backslash at the
# end): every match attempt from a quote then succeeds where it stops, so removing strings
# takes one pass. Requiring the closing quote made a header of many escaped quotes and no
# closing one take quadratic time (minutes for a 256 KiB header), before json.loads refused it.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)


def to_json_value(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as plain JSON values (dict, list, str, int, float, bool, None).

    Raises
    ------
    TypeError
        If some part of ``value`` is of a type with no JSON form; the message says which.
    ValueError
        If a number in it is NaN, infinite, too large for a float64 or an integer of more
        than :data:`MAX_INT_DIGITS` digits, or it is nested more than :data:`MAX_DEPTH` deep.
    """
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_DEPTH:
        # ``depth`` containers enclose this one: it is level ``depth + 1`` of brackets, the
        # count :func:`loads` limits.
        raise ValueError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        number = int(value)
        if len(str(abs(number))) > MAX_INT_DIGITS:
            raise ValueError(
                f"{where} is an integer of more than {MAX_INT_DIGITS} digits, more than a "
                "checkpoint reads back"
            )
        return number
    if isinstance(value, numbers.Real):
        # Any real number a step accepts (floats, numpy floats, fractions.Fraction, float
        # subclasses) is written as the float64 the step uses: exact for every float16/32/64
        # value, float(value) for the others.
        try:
            real = float(value)
        except OverflowError:
            raise ValueError(f"{where} is too large for a float64") from None
        if not math.isfinite(real):
            raise ValueError(f"{where} is {real}, which JSON cannot hold")
        return real
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has the key {key!r}: JSON keys must be strings "
                    "(JSON would turn it into one, and it would come back different)"
                )
            out[key] = to_json_value(item, f"{where}[{key!r}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, not a JSON value")


def dumps(value: Any, where: str) -> str:
    """Compact JSON text of ``value`` (see :func:`to_json_value` for what it accepts).

    Raises
    ------
    ValueError
        Also if the text nests more than :data:`MAX_DEPTH` levels deep, where :func:`loads`
        would refuse it (values already converted by :func:`to_json_value` and placed inside
        another document can reach it).
    """
    text = json.dumps(to_json_value(value, where), allow_nan=False, separators=(",", ":"))
    if _depth(text) > MAX_DEPTH:
        raise ValueError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    return text


def _depth(text: str) -> int:
    """How deeply lists and objects nest in ``text`` (brackets inside strings not counted)."""
    stripped = _STRING.sub("", text)
    marks = np.frombuffer(stripped.encode("utf-8", "replace"), dtype=np.uint8)
    steps = np.zeros(marks.shape, dtype=np.int64)
    steps[(marks == ord("[")) | (marks == ord("{"))] = 1
    steps[(marks == ord("]")) | (marks == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _real(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


def _constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON value")


def loads(text: str, what: str) -> Any:
    """Parse ``text``, refusing NaN, Infinity, long integers, repeated keys and deep nesting.

    Raises
    ------
    ValueError
        For anything but strict JSON within those limits; the message starts with ``what``.
    """
    if _depth(text) > MAX_DEPTH:
        raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_integer,
            parse_float=_real,
            parse_constant=_constant,
        )
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"{what} is not valid JSON: {error}") from None
