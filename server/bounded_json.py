"""JSON from a client, parsed under bounds that hold before the parse: nesting depth and the
number of elements.

``json.loads`` (and orjson) build whatever structure the bytes describe: 20 kB of gzip can hold
7 M empty lists (half a gigabyte of Python objects) and deep nesting overflows the stack of any
code that walks the result. A :class:`Scanner` reads the bytes first (strings skipped, at C speed
where it can), in pieces as they come (an inflating body is refused after its first bad
kilobytes, not once it is whole), and refuses a document nested deeper than ``max_depth`` or
holding more than ``max_elements`` values and keys; :func:`loads` scans, then parses with orjson.
Call both off the event loop; the scan is linear in the bytes, and each step of it is short, so
the loop's thread is not held for long.
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


class Scanner:
    """Depth and element count of a JSON document fed in pieces (:meth:`feed`).

    Elements are values in arrays and members of objects, counted by their separators and
    openings. Strings are skipped whole, so brackets and commas inside them do not count; escaped
    quotes are neutralised first (``\\\\`` pairs, then ``\\"``, the order JSON reads them; a
    piece's trailing backslashes wait for the next piece). Valid JSON has at most a few structural
    tokens (strings, brackets, colons) per element, so the scan also stops after
    ``8 * max_elements`` of them: ``]]]]`` or ``"" "" ""`` cannot make it long.
    """

    def __init__(self, *, max_depth: int, max_elements: int) -> None:
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.depth = self.elements = self.tokens = 0
        self.in_string = False
        self._carry = b""  # trailing backslashes of the last piece

    def feed(self, piece: bytes) -> None:
        """Scan ``piece``, the bytes after those fed before; :class:`JsonRefused` past a bound."""
        data = self._carry + piece
        if b"\\" in data:
            kept = data.rstrip(b"\\")
            self._carry = data[len(kept) :]
            data = kept.replace(b"\\\\", b"__").replace(b'\\"', b"__")
        pos, end = 0, len(data)
        while pos < end:
            if self.in_string:
                close = data.find(b'"', pos)
                if close < 0:
                    return
                self.in_string, pos = False, close + 1
                continue
            match = _STRUCTURE.search(data, pos, min(pos + _WINDOW, end))
            if match is None:
                pos += _WINDOW
                continue
            pos = match.end()
            self._token(data[match.start()])

    def _token(self, byte: int) -> None:
        self.tokens += 1
        if self.tokens > 8 * self.max_elements + 8:
            raise self._too_many()
        if byte == 0x22:  # '"'
            self.in_string = True
        elif byte in _OPEN:
            self.depth += 1
            self.elements += 1
            if self.depth > self.max_depth:
                raise JsonRefused(f"nested deeper than {self.max_depth} levels")
        elif byte in _CLOSE:
            self.depth -= 1
            if self.depth < 0:
                raise JsonRefused(f"not valid JSON: {chr(byte)!r} closes nothing")
        elif byte == 0x2C:  # ','; a ':' follows a key, whose member its ',' or '{' counted
            self.elements += 1
        if self.elements > self.max_elements:
            raise self._too_many()

    def _too_many(self) -> JsonRefused:
        return JsonRefused(f"more than {self.max_elements} elements (values and keys)")


def loads(data: bytes, scanner: Scanner) -> Any:
    """The JSON value in ``data``, scanned by a fresh ``scanner`` first; :class:`JsonRefused`
    naming the first problem."""
    scanner.feed(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise JsonRefused(f"not valid JSON: {exc}") from None
