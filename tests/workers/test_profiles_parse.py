"""The profiles stage's reading of a ``labels`` record: what is not a label is a ``label_invalid`` letter whose
detail says why (not UTF-8, no value, not JSON, not a label)."""

from __future__ import annotations

import json

import pytest

from streamcore.exceptions import BadInput
from workers.profiles import _parse

LABEL = {"schema": "label/v1", "post_id": "look-1", "model_version": "v1", "categories": []}


def _refusal(value: bytes | None) -> BadInput:
    with pytest.raises(BadInput) as info:
        _parse(value)
    assert info.value.code == "label_invalid"
    return info.value


def test_a_label_is_read() -> None:
    assert _parse(json.dumps(LABEL).encode()) == LABEL
    utf8 = LABEL | {"head": "über"}
    assert _parse(json.dumps(utf8, ensure_ascii=False).encode()) == utf8


@pytest.mark.parametrize("value", [b"\xff\xfe", b"\xff\xfe" + json.dumps(LABEL).encode("utf-16-le"),
                                   json.dumps(LABEL).encode("utf-16"), json.dumps(LABEL).encode("utf-32"),
                                   b'{"post_id": "\xe9"}', b'{"post_id": "\xed\xa0\x80"}'],
                         ids=["utf16-bom", "utf16-le-label", "utf16-label", "utf32-label", "latin1", "surrogate"])
def test_bytes_that_are_not_utf8_say_so_never_a_json_error(value) -> None:
    detail = _refusal(value).detail
    assert "not UTF-8" in detail and "Expecting value" not in detail


def test_a_utf8_byte_order_mark_is_refused_as_such() -> None:
    assert "byte-order mark" in _refusal(b"\xef\xbb\xbf" + json.dumps(LABEL).encode()).detail


@pytest.mark.parametrize("value", [None, b""], ids=["tombstone", "empty"])
def test_a_record_without_a_value_says_so(value) -> None:
    assert "no value" in _refusal(value).detail


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b'{"post_id": 1, "model_version": "v1"}',
                                   b'{"post_id": "look-1"}', b"[" * 100_000],
                         ids=["text", "array", "id-not-string", "no-version", "too-deep"])
def test_json_that_is_not_a_label_is_refused(value) -> None:
    assert _refusal(value).detail.startswith("labels record is not a label: ")
