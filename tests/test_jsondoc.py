"""JSON documents split into NDJSON records plus their envelope (loaders.replica.jsondoc):
whatever the layout, the records read by pyarrow are the document's records, and the
envelope is the document without them."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.json as pj
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loaders.replica.errors import PageError
from loaders.replica.jsondoc import split_document
from loaders.replica.pages import EntitySpec, parse_page


def lines(ndjson: bytes) -> list:
    return [json.loads(line) for line in ndjson.split(b"\n")] if ndjson else []


def read(ndjson: bytes) -> list[dict]:
    return pj.read_json(io.BytesIO(ndjson)).to_pylist()


TRICKY = [
    {"order_id": 1, "note": 'a "quoted" word', "path": "C:\\temp\\"},
    {"order_id": 2, "note": "},{\"order_id\": 9}, [ ] ,", "path": "\\\\\"\\"},
    {"order_id": 3, "note": "naïve café ✓ 日本 🎉", "path": "line\nbreak\ttab"},
    {"order_id": 4, "note": None, "path": "[", "nested": {"a": [{"b": "]}"}], "c": {}}},
    {"order_id": 5, "note": "", "path": "]", "nested": {"a": [], "c": {"d": [[1], [2]]}}},
]


@pytest.mark.parametrize("indent", [None, 0, 2, "\t"])
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_an_envelope_gives_its_records_and_the_rest(indent, ensure_ascii):
    doc = {"data": TRICKY, "next_cursor": "abc", "has_more": True, "meta": {"ids": [1, 2]}}
    body = json.dumps(doc, indent=indent, ensure_ascii=ensure_ascii).encode()
    records, envelope = split_document(body, "data")
    assert lines(records) == TRICKY
    assert read(records) == read("\n".join(json.dumps(r) for r in TRICKY).encode())
    assert envelope == {"data": [], "next_cursor": "abc", "has_more": True,
                        "meta": {"ids": [1, 2]}}


def test_a_bare_array_is_the_records():
    body = json.dumps(TRICKY, indent=2).encode()
    records, envelope = split_document(body, "")
    assert lines(records) == TRICKY
    assert envelope == []


def test_a_nested_path_beside_larger_arrays_at_the_same_depth():
    doc = {
        "result": {"tags": list(range(500)), "items": TRICKY[:2], "more": [[1, 2]] * 50},
        "page": {"items": list(range(300))},
        "links": {"next": "https://api.example.com/v1/orders?page=2"},
    }
    records, envelope = split_document(json.dumps(doc, indent=1).encode(), "result.items")
    assert lines(records) == TRICKY[:2]
    assert envelope == {**doc, "result": {**doc["result"], "items": []}}


def test_the_records_parse_as_their_ndjson_page_would():
    spec = EntitySpec(
        name="orders", path="v1/orders", primary_key="order_id", cursor="updated_at",
        fields={"order_id": "integer", "note": "string", "updated_at": "timestamp"},
    )
    rows = [{"order_id": i, "note": TRICKY[i % 5]["note"],
             "updated_at": f"2026-11-0{i + 1}T10:00:00Z"} for i in range(5)]
    ndjson = "\n".join(json.dumps(r) for r in rows).encode()
    body = json.dumps({"data": rows, "next_cursor": None}, indent=2).encode()
    native = parse_page(spec, ndjson)
    parsed = parse_page(spec, split_document(body, "data")[0])
    assert parsed.table.equals(native.table)
    assert parsed.table.num_rows == 5 and parsed.quarantined == []


def test_records_arrive_one_per_line_with_no_raw_newline_inside():
    body = json.dumps({"data": TRICKY}, indent=4).encode()
    records, _ = split_document(body, "data")
    assert records.count(b"\n") == len(TRICKY) - 1
    assert b"\r" not in records


def test_carriage_returns_and_a_byte_order_mark():
    body = b'\xef\xbb\xbf{"data": [\r\n  {"a": 1},\r\n  {"a": 2}\r\n], "next": null}'
    records, envelope = split_document(body, "data")
    assert lines(records) == [{"a": 1}, {"a": 2}]
    assert envelope == {"data": [], "next": None}


@pytest.mark.parametrize("body", [b'{"data": []}', b'{"data": [ \n ], "next": null}'])
def test_an_empty_array_gives_no_records(body):
    records, envelope = split_document(body, "data")
    assert records == b""
    assert envelope["data"] == []


def test_an_empty_bare_array():
    assert split_document(b" [ ] ", "") == (b"", [])


@pytest.mark.parametrize(
    ("body", "path", "says"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "data", "not a JSON document"),
        (b"", "data", "not a JSON document"),
        (b'{"data": [{"a": 1}]', "data", "not a JSON document"),
        (b'{"data": [{"a": 1}]]', "data", "not a JSON document"),
        (b'{"data": [{"a": "1}]}', "data", "not a JSON document"),
        (b'{"data": [{"a": 1}], "next": }', "data", "not a JSON document"),
        (b'{"data": [{"a": 1}]} {"x": 1}', "data", "not a JSON document"),
        (b'{"a": 1}\n{"a": 2}\n', "data", "not a JSON document"),
        (b'{"results": [{"a": 1}]}', "data", "has no key 'data' (its keys: 'results')"),
        (b'{"data": {"a": 1}}', "data", "data is an object"),
        (b'{"data": null}', "data", "data is a null"),
        (b'{"data": "[{}]"}', "data", "data is a string"),
        (b'{"result": [{"items": []}]}', "result.items", "result is an array, not an object"),
        (b'{"data": [{"a": 1}]}', "", "the document is an object"),
        (b'[{"a": 1}]', "data", "the document is an array, not an object"),
        (b"[1, 2]", "", "something other than objects"),
        (b'{"data": [1]}', "data", "something other than objects"),
        (b'{"data": ["{}"]}', "data", "something other than objects"),
        (b'{"data": [{"a": 1}, 2]}', "data", "something other than objects"),
        (b'{"data": [{"a": 1}, [{"a": 2}]]}', "data", "something other than objects"),
        (b'{"data": [null, {"a": 1}]}', "data", "something other than objects"),
        (b'{"data": [{"a": 1} true]}', "data", "something other than objects"),
        (b'{"data": [{"a": 1},]}', "data", "something other than objects"),
    ],
)
def test_what_is_not_an_array_of_objects_is_refused(body, path, says):
    with pytest.raises(PageError) as caught:
        split_document(body, path)
    assert says in str(caught.value)
    assert caught.value.answered


# random records: fields of a few kinds, any of them null or missing; strings with the
# bytes that matter to the scan
nasty_text = st.text(
    alphabet=st.sampled_from(list('ab "\\{}[],:\n\t\r/é日🎉\x00\x1f')), max_size=12
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), nasty_text)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(nasty_text, inner, max_size=3)
    ),
    max_leaves=8,
)
KINDS = {
    "string": nasty_text,
    "integer": st.integers(-(2**62), 2**62),
    "boolean": st.booleans(),
    "object": st.fixed_dictionaries({"s": nasty_text, "n": st.integers(0, 9)}),
    "list": st.lists(nasty_text, max_size=3),
}


@st.composite
def record_lists(draw) -> list[dict]:
    fields = draw(st.dictionaries(
        st.text(alphabet="abcxyz_é\"\\", min_size=1, max_size=5),
        st.sampled_from(sorted(KINDS)), min_size=1, max_size=4,
    ))
    count = draw(st.integers(0, 6))
    records = []
    for _ in range(count):
        record = {}
        for name, kind in fields.items():
            choice = draw(st.sampled_from(["value", "value", "null", "missing"]))
            if choice == "value":
                record[name] = draw(KINDS[kind])
            elif choice == "null":
                record[name] = None
        records.append(record)
    return records


keys = st.text(alphabet="abcdef_ \"\\é", min_size=1, max_size=6)


@st.composite
def documents(draw) -> tuple[object, str, list[dict]]:
    """(a document holding records at a path, the path, the records)."""
    records = draw(record_lists())
    path = draw(st.lists(keys.filter(lambda k: "." not in k), max_size=3, unique=True))
    doc: object = records
    for key in reversed(path):
        siblings = draw(st.dictionaries(keys, json_value, max_size=3))
        siblings.pop(key, None)
        items = list(siblings.items())
        at = draw(st.integers(0, len(items)))
        doc = dict(items[:at] + [(key, doc)] + items[at:])
    return doc, ".".join(path), records


def without_records(doc: object, path: str) -> object:
    if not path:
        return []
    doc = json.loads(json.dumps(doc))
    node = doc
    *above, last = path.split(".")
    for key in above:
        node = node[key]
    node[last] = []
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents(),
    st.sampled_from([None, 0, 1, 2, 4, "\t"]),
    st.booleans(),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,  ", " :\n")]),
)
def test_any_document_splits_into_its_records_and_the_rest(
    document, indent, ensure_ascii, separators
):
    doc, path, records = document
    body = json.dumps(doc, indent=indent, ensure_ascii=ensure_ascii,
                      separators=separators).encode()
    ndjson, envelope = split_document(body, path)
    assert lines(ndjson) == records
    assert envelope == without_records(doc, path)
    if records:
        expected = "\n".join(json.dumps(r) for r in records).encode()
        try:
            wanted = pj.read_json(io.BytesIO(expected))
        except pa.ArrowInvalid:  # types Arrow cannot unify: the lines matched above
            return
        assert pj.read_json(io.BytesIO(ndjson)).equals(wanted)
    else:
        assert ndjson == b""
