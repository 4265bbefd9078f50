"""JSON documents (``{"data": [...], "next_cursor": ...}``, or a bare array) split into
NDJSON records plus the envelope around them, without a Python object per record.

Why: a listing served as one JSON document must reach the same hot path as an NDJSON
page (pyarrow's JSON reader, see :mod:`.pages`). ``json.loads`` of the page would build
a dict per row, which that path exists to avoid; only the envelope (paging fields, a
few keys) is worth parsing in Python, because dlt's paginators read it.

How: one vectorised scan of the body's bytes with numpy. Quotes preceded by an odd run
of backslashes are escaped and do not count; a structural byte (``{ } [ ] ,``) is inside
a string when an odd number of real quotes precede it; nesting depth is the cumulative
sum of openings and closings, and brackets pair up within their depth. The records array
is an ``[`` at the depth of ``records_path`` (each dotted key is one object deeper; ``""``
is the document itself). Of those, largest first, the one the path leads to is found by
``json.loads`` of the document with that array replaced by a sentinel, which also checks
the envelope is JSON and gives the envelope to return. Inside the array the records must
be objects (an opening brace, its closing brace, a comma, and only whitespace between);
every newline byte becomes a space (a raw newline is never inside a valid JSON string)
and the commas between records become newlines: NDJSON, one record per line. A record
that is itself broken JSON is left to the page parser, which quarantines it as it does a
broken NDJSON line.

May import: numpy and this package's ``errors``.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import numpy as np

from loaders.replica.errors import PageError

# byte classes of the scan
_OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _CLOSE_ARRAY, _COMMA = 1, 2, 3, 4, 5
_QUOTE_BYTE, _BACKSLASH_BYTE = 6, 7
_CLASS = np.zeros(256, dtype=np.uint8)
for _byte, _kind in ((b"{", _OPEN_OBJECT), (b"}", _CLOSE_OBJECT), (b"[", _OPEN_ARRAY),
                     (b"]", _CLOSE_ARRAY), (b",", _COMMA), (b'"', _QUOTE_BYTE),
                     (b"\\", _BACKSLASH_BYTE)):
    _CLASS[_byte[0]] = _kind
_IS_TOKEN = bytes(_CLASS.astype(bool).astype(np.uint8))  # a translate table: 1 or 0
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[ord(c) for c in " \t\r\n"]] = True
_QUOTE, _NEWLINE = 34, 10
_NEWLINES_TO_SPACES = bytes.maketrans(b"\r\n", b"  ")
_UTF8_BOM = b"\xef\xbb\xbf"


def split_document(body: bytes, records_path: str) -> tuple[bytes, Any]:
    """(the records as NDJSON bytes, one record per line, ready for parse_page; the
    document with the records array replaced by [] parsed with json.loads, for paginators).

    ``records_path``: where the records are, ``""`` when the document is the array,
    dotted keys for nesting (``"result.items"``). An empty array gives ``b""``. Raises
    :class:`PageError` when the body is not JSON, has nothing at the path, or has there
    something other than an array of objects."""
    body = body.removeprefix(_UTF8_BOM)
    path = records_path.split(".") if records_path else []
    where = f"at {records_path!r}" if records_path else "as the document itself"
    scan = _Scan(body)
    candidates = scan.arrays_at_depth(len(path))
    if not candidates:
        raise _missing(body, path)
    for start, end in candidates:
        begin, stop = int(scan.positions[start]), int(scan.positions[end])
        envelope, found = _envelope(body, begin, stop, path)
        if found:
            return scan.records(start, end, where), envelope
    raise _missing(body, path)


class _Scan:
    """The structural bytes of a body (outside strings), with their depth and pairs."""

    def __init__(self, body: bytes) -> None:
        data = np.frombuffer(body, dtype=np.uint8)
        self.body, self.data = body, data
        # bytes.translate and nonzero over booleans are the fastest passes numpy offers
        # here: one byte in five or so is a token, the rest is never looked at again
        tokens = np.flatnonzero(np.frombuffer(body.translate(_IS_TOKEN), dtype=np.bool_))
        token_kinds = _CLASS[data[tokens]]
        real_quote = token_kinds == _QUOTE_BYTE
        escaped = _escaped_quotes(data, tokens[token_kinds == _BACKSLASH_BYTE])
        real_quote[np.searchsorted(tokens, escaped)] = False
        # a structural byte after an odd number of real quotes is inside a string: the
        # parity of the quotes so far is a running xor
        in_string = np.bitwise_xor.accumulate(real_quote.view(np.uint8))
        if in_string.size and in_string[-1]:
            raise _not_json(body, "a string is not closed")
        outside = (token_kinds <= _COMMA) & (in_string == 0)
        self.positions = tokens[outside]
        self.kinds = token_kinds[outside]
        opens = (self.kinds == _OPEN_OBJECT) | (self.kinds == _OPEN_ARRAY)
        closes = (self.kinds == _CLOSE_OBJECT) | (self.kinds == _CLOSE_ARRAY)
        delta = opens.astype(np.int64) - closes.astype(np.int64)
        after = np.cumsum(delta)
        if after.size and (after.min() < 0 or after[-1] != 0):
            raise _not_json(body, "its brackets do not balance")
        # the depth a token sits at: an opening's before it, a closing's after it (a
        # comma's: the depth of the value it separates)
        self.depth = np.where(opens, after - 1, after)
        brackets = np.flatnonzero(opens | closes)
        # within one depth, openings and closings alternate: sorted by (depth,
        # position), each opening is followed by its closing
        depth = self.depth[brackets]
        if depth.size and depth.max() < np.iinfo(np.int16).max:
            depth = depth.astype(np.int16)  # a stable sort of 16 bits is a radix sort
        order = brackets[np.argsort(depth, kind="stable")]
        first, second = order[0::2], order[1::2]
        pairs_ok = (
            (self.depth[first] == self.depth[second])
            & (second > first)
            & (self.kinds[second] == self.kinds[first] + 1)
        )
        if not np.all(pairs_ok):
            raise _not_json(body, "its brackets do not match")
        self.closing = np.zeros(len(self.positions), dtype=np.int64)
        self.closing[first] = second

    def arrays_at_depth(self, depth: int) -> list[tuple[int, int]]:
        """Token indices (opening, closing) of the arrays at ``depth``, largest first."""
        at = np.flatnonzero((self.kinds == _OPEN_ARRAY) & (self.depth == depth))
        ends = self.closing[at]
        size = self.positions[ends] - self.positions[at]
        order = np.argsort(-size, kind="stable")
        return [(int(at[i]), int(ends[i])) for i in order]

    def records(self, start: int, end: int, where: str) -> bytes:
        """The objects of the array between tokens ``start`` and ``end``, as NDJSON."""
        begin, stop = int(self.positions[start]), int(self.positions[end])
        depth = self.depth[start] + 1
        # the records' braces and commas
        top = np.flatnonzero(self.depth[start + 1:end] == depth) + (start + 1)
        kinds = self.kinds[top]
        if not len(top):
            if not _WHITESPACE[self.data[begin + 1:stop]].all():
                raise _not_objects(self.data, begin, stop, where)
            return b""
        shape_ok = (
            len(kinds) % 3 == 2
            and np.all(kinds[0::3] == _OPEN_OBJECT)
            and np.all(kinds[1::3] == _CLOSE_OBJECT)
            and np.all(kinds[2::3] == _COMMA)
        )
        if not shape_ok:
            raise _not_objects(self.data, begin, stop, where)
        # between the array's bracket, the braces and the commas: whitespace only
        at = self.positions[top]
        # [ or , -> the next {; } -> the next , or ]
        gap_starts = np.concatenate(([begin], at[2::3], at[1::3])) + 1
        gap_ends = np.concatenate((at[0::3], at[2::3], [stop]))
        if _any_non_whitespace(self.data, gap_starts, gap_ends):
            raise _not_objects(self.data, begin, stop, where)
        out = bytearray(memoryview(self.body)[begin + 1:stop]).translate(_NEWLINES_TO_SPACES)
        np.frombuffer(out, dtype=np.uint8)[at[2::3] - (begin + 1)] = _NEWLINE
        return bytes(out)


def _escaped_quotes(data: np.ndarray, slashes: np.ndarray) -> np.ndarray:
    """Positions of the quotes preceded by an odd run of backslashes (``slashes``: the
    positions of the backslashes)."""
    if not slashes.size:
        return slashes
    breaks = np.flatnonzero(np.diff(slashes) != 1)
    run_starts = slashes[np.concatenate(([0], breaks + 1))]
    run_ends = slashes[np.concatenate((breaks, [slashes.size - 1]))]
    odd = (run_ends - run_starts + 1) % 2 == 1
    after = run_ends[odd] + 1
    after = after[after < data.size]
    return after[data[after] == _QUOTE]


def _any_non_whitespace(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether any byte of the spans [starts, ends) is not whitespace. The spans are the
    gaps between records: only their own bytes are looked at."""
    lengths = ends - starts
    total = int(lengths.sum())
    if not total:
        return False
    # the positions of every byte of every span, without a loop
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return not _WHITESPACE[data[shift + np.arange(total)]].all()


def _envelope(body: bytes, begin: int, stop: int, path: list[str]) -> tuple[Any, bool]:
    """The document with the array at bytes ``begin``..``stop`` replaced by ``[]``, and
    whether ``path`` leads to that array (False: to another array)."""
    mark = _sentinel(body)
    try:
        doc = json.loads(body[:begin] + json.dumps(mark).encode() + body[stop + 1:])
    except (ValueError, UnicodeDecodeError) as exc:
        raise _not_json(body, str(exc)) from None
    node, why = _walk(doc, path)
    if why is not None or not isinstance(node, str | list):
        # an array elsewhere at the same depth never holds the path's objects: the
        # path is missing or leads to something else whichever array was replaced
        raise _missing(body, path)
    if node != mark:
        return None, False
    if not path:
        return [], True
    parent, _ = _walk(doc, path[:-1])
    parent[path[-1]] = []
    return doc, True


def _require_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _not_json(body, str(exc)) from None


def _sentinel(body: bytes) -> str:
    while True:
        mark = f"records-{secrets.token_hex(8)}"
        if mark.encode() not in body:
            return mark


def _walk(doc: Any, path: list[str]) -> tuple[Any, str | None]:
    """The value ``path`` leads to in ``doc``, or (None, why not)."""
    node = doc
    for i, key in enumerate(path):
        if not isinstance(node, dict):
            above = ".".join(path[:i]) or "the document"
            return None, f"{above} is {_a(_json_type(node))}, not an object"
        if key not in node:
            above = ".".join(path[:i]) or "the document"
            keys = ", ".join(map(repr, list(node)[:10])) or "none"
            return None, f"{above} has no key {key!r} (its keys: {keys})"
        node = node[key]
    return node, None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _preview(body: bytes | np.ndarray, begin: int = 0, stop: int | None = None) -> str:
    raw = bytes(body[begin:begin + 120 if stop is None else min(stop, begin + 120)])
    return repr(raw)


def _not_json(body: bytes, why: str) -> PageError:
    return PageError(
        f"the page is not a JSON document ({why}): {_preview(body)}. The API, or a proxy"
        " in front of it, answered with something other than records; check the"
        " endpoint's format setting",
        answered=f"not JSON: {body[:200].decode('utf-8', 'replace')}",
    )


def _missing(body: bytes, path: list[str]) -> PageError:
    where = f"at {'.'.join(path)!r}" if path else "as the document itself"
    doc = _require_json(body)
    node, why = _walk(doc, path)
    if why is None:
        why = f"{'.'.join(path) or 'the document'} is {_a(_json_type(node))}"
    return PageError(
        f"the JSON page has no array of records {where}: {why}. Check the endpoint's"
        f" records_path setting: {_preview(body)}",
        answered=f"no records {where}: {body[:200].decode('utf-8', 'replace')}",
    )


def _not_objects(data: np.ndarray, begin: int, stop: int, where: str) -> PageError:
    return PageError(
        f"the JSON page's array {where} holds something other than objects:"
        f" {_preview(data, begin, stop + 1)}. Each record must be a JSON object",
        answered=f"records that are not objects {where}",
    )
