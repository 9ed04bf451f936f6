"""JSON from a client, parsed under bounds that hold before the parse: nesting depth and the
number of elements.

``json.loads`` (and orjson) build whatever structure the bytes describe: 20 kB of gzip can hold
7 M empty lists (half a gigabyte of Python objects) and deep nesting overflows the stack of any
code that walks the result. :func:`loads` first scans the bytes (strings skipped, at C speed
where it can) and refuses a document nested deeper than ``max_depth`` or holding more than
``max_elements`` values and keys, then parses it with orjson. Call it off the event loop; the scan
is linear in the bytes, and each step of it is short, so the loop's thread is not held for long.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# bytes that matter outside strings: a string's start, nesting, and separators of elements
_STRUCTURE = re.compile(rb'["\[\]{},:]')
_WINDOW = 1 << 20  # bytes one regex search may scan (a short hold of the GIL)
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")


class JsonRefused(ValueError):
    """The document is not valid JSON, or is past a bound; the message says which."""


def loads(data: bytes, *, max_depth: int, max_elements: int) -> Any:
    """The JSON value in ``data``, or :class:`JsonRefused` naming the first problem."""
    check_structure(data, max_depth=max_depth, max_elements=max_elements)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise JsonRefused(f"not valid JSON: {exc}") from None


def check_structure(data: bytes, *, max_depth: int, max_elements: int) -> None:
    """Refuse ``data`` nested deeper than ``max_depth`` or with more than ``max_elements``
    elements (values in arrays, members of objects, counted by their separators and openings).
    Strings are skipped whole, so brackets and commas inside them do not count; escaped quotes
    are neutralised first (``\\\\`` pairs, then ``\\"``, the order JSON reads them). Valid JSON
    has at most a few structural tokens (strings, brackets, colons) per element, so the scan also
    stops after ``8 * max_elements``: ``]]]]`` or ``"" "" ""`` cannot make it long."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    depth = elements = tokens = pos = 0
    end = len(data)
    too_many = JsonRefused(f"more than {max_elements} elements (values and keys)")
    while pos < end:
        match = _STRUCTURE.search(data, pos, min(pos + _WINDOW, end))
        if match is None:
            pos += _WINDOW
            continue
        pos = match.end()
        tokens += 1
        if tokens > 8 * max_elements + 8:
            raise too_many
        byte = data[match.start()]
        if byte == 0x22:  # '"': skip the string (an unterminated one is orjson's to name)
            close = data.find(b'"', pos)
            pos = end if close < 0 else close + 1
        elif byte in _OPEN:
            depth += 1
            elements += 1
            if depth > max_depth:
                raise JsonRefused(f"nested deeper than {max_depth} levels")
        elif byte in _CLOSE:
            depth -= 1
            if depth < 0:
                raise JsonRefused(f"not valid JSON: {chr(byte)!r} closes nothing")
        elif byte == 0x2C:  # ','; a ':' follows a key, whose member its ',' or '{' counted
            elements += 1
        if elements > max_elements:
            raise too_many
