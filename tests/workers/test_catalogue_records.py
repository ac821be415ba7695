"""What the catalogue stage takes as one item: a record keyed by its id, identified by its content without the time
it was sent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka.structs import ConsumerRecord

from streamcore.exceptions import BadInput
from streamcore.schemas import ImageSource, Post
from workers.catalogue import _keyed, item_fingerprint


def _item(**changes) -> Post:
    fields = {"post_id": "item-1", "created_at": datetime(2024, 5, 1, tzinfo=UTC), "user": "atelier",
              "caption": "Linen midi dress", "image": ImageSource(url="https://shop.example/dress.jpg")}
    return Post(**{**fields, **changes})


def _record(key: bytes | None) -> ConsumerRecord:
    return ConsumerRecord("catalogue", 0, 7, 0, 0, key, b"{}", None, 0, 2, [])


def test_an_item_sent_again_is_the_same_item_and_other_content_is_not() -> None:
    first = item_fingerprint(_item())
    assert item_fingerprint(_item(created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))) == first
    for changed in ({"caption": "Linen maxi dress"}, {"user": "other-shop"}, {"post_id": "item-2"},
                    {"image": ImageSource(url="https://shop.example/other.jpg")}):
        assert item_fingerprint(_item(**changed)) != first, changed


def test_an_item_keyed_by_another_id_is_refused() -> None:
    item = _item()
    assert _keyed(_record(b"item-1"), item) is item
    for key in (b"item-2", None, b""):
        with pytest.raises(BadInput) as refused:
            _keyed(_record(key), item)
        assert refused.value.code == "bad_key"
