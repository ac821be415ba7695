"""Contract messages: limits and dead-letter reasons."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from streamcore.contract import json_schema
from streamcore.exceptions import BadInput
from streamcore.schemas import Hints, HintsUsed, ImageSource, Label, LabelTerm, Post, ScoredTerm, utcnow
from streamcore.serde import decode, decode_post, encode
from streamcore.settings import Settings

IMG = base64.b64encode(b"\x89PNG fake").decode()


def _post(**overrides) -> dict:
    data = {"schema": "post/v1", "post_id": "abc_1.2:3-x", "created_at": "2026-11-22T10:00:00Z", "user": "u",
            "caption": "red dress", "image": {"b64": IMG}}
    data.update(overrides)
    return data


def test_post_roundtrip_uses_contract_field_names():
    post = Post.model_validate(_post())
    raw = encode(post)
    assert json.loads(raw)["schema"] == "post/v1"
    assert decode_post(raw, Settings().limits) == post


@pytest.mark.parametrize("post_id", ["", "a" * 129, "has space", "semi;colon", "ünï"])
def test_post_id_limits(post_id):
    with pytest.raises(ValidationError):
        Post.model_validate(_post(post_id=post_id))


@pytest.mark.parametrize("image", [{}, {"b64": IMG, "url": "https://x/y.jpg"}, {"url": None}])
def test_exactly_one_image_source(image):
    with pytest.raises(ValidationError):
        Post.model_validate(_post(image=image))


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "empty"),
        (b"\xff\xfe\x00", "bad_encoding"),
        (b"{not json", "bad_json"),
        (b"[1, 2]", "bad_schema"),
        (json.dumps(_post(schema="post/v2")).encode(), "bad_schema"),
        (json.dumps(_post(comments="not a list")).encode(), "bad_schema"),
        (json.dumps({k: v for k, v in _post().items() if k != "user"}).encode(), "bad_schema"),
        (json.dumps(_post(caption="nul\x00byte")).encode(), "bad_schema"),
        (json.dumps(_post(unexpected=1)).encode(), "bad_schema"),
        # No offset: which instant it names would depend on the worker's time zone.
        (json.dumps(_post(created_at="2026-01-01T00:00:00")).encode(), "bad_schema"),
        (json.dumps(_post(created_at="0001-01-01")).encode(), "bad_schema"),
    ],
)
def test_decode_post_reasons(raw, code):
    with pytest.raises(BadInput) as info:
        decode_post(raw, Settings().limits)
    assert info.value.code == code


def test_size_limits_are_configurable():
    raw = json.dumps(_post(caption="x" * 2000)).encode()
    assert decode_post(raw, Settings().limits).caption == "x" * 2000
    with pytest.raises(BadInput) as info:
        decode_post(raw, Settings.named(max_text_bytes=1000).limits)
    assert info.value.code == "text_too_long"
    with pytest.raises(BadInput) as info:
        decode_post(raw, Settings.named(max_message_bytes=1024).limits)
    assert info.value.code == "too_large"


def test_hint_scores_must_sum_to_one_per_class():
    Hints(post_id="p", miner_version="m", categories=[ScoredTerm(term="dresses", score=0.7),
                                                      ScoredTerm(term="skirts", score=0.3)])
    with pytest.raises(ValidationError, match="sum to 1"):
        Hints(post_id="p", miner_version="m", categories=[ScoredTerm(term="dresses", score=0.7)])
    with pytest.raises(ValidationError):
        Hints(post_id="p", miner_version="m", materials=[ScoredTerm(term=f"m{i}", score=0.2) for i in range(5)])



def test_label_scores_are_independent_probabilities_and_say_so():
    now, terms = utcnow(), [ScoredTerm(term="dresses", score=0.9), ScoredTerm(term="coats", score=0.42)]
    label = Label(post_id="p", model_version="v", head="fusion", categories=terms, subcategories=[], attributes=[],
                  hints_used=HintsUsed(source="none"), received_at=now, labeled_at=now)  # 1.32: no sum rule
    assert label.categories == [LabelTerm(term="dresses", score=0.9), LabelTerm(term="coats", score=0.42)]
    with pytest.raises(ValidationError):
        Label.model_validate(label.model_dump() | {"attributes": [{"term": "floral", "score": 1.5}]})
    assert "sum to 1" in json_schema(Hints)["$defs"]["ScoredTerm"]["description"]
    described = json_schema(Label)["$defs"]
    assert "ScoredTerm" not in described and "independent" in described["LabelTerm"]["description"]

def test_image_source_bytes():
    assert ImageSource(b64=IMG).raw_bytes() == b"\x89PNG fake"
    with pytest.raises(ValueError):
        ImageSource(url="https://example.com/a.jpg").raw_bytes()


def test_base64_is_checked_where_the_image_is_read():
    source = Post.model_validate(_post(image={"b64": "%%%not base64"})).image  # parses: text stages ignore it
    with pytest.raises(BadInput) as info:
        source.raw_bytes()
    assert info.value.code == "image_b64_invalid"


def test_a_reader_ignores_fields_a_newer_writer_added_at_any_depth_and_still_checks_the_rest():
    newer = (b'{"schema": "hints/v1", "post_id": "look-1", "miner_version": "text-miner/1.1", "language": "en",'
             b' "categories": [{"term": "dresses", "score": 1.0, "rank": 1}]}')
    with pytest.raises(BadInput, match="rank"):
        decode(newer, Hints, max_bytes=10_000)
    hints = decode(newer, Hints, max_bytes=10_000, tolerant=True)
    assert hints.categories == [ScoredTerm(term="dresses", score=1.0)]
    with pytest.raises(BadInput) as refused:
        decode(newer.replace(b'"score": 1.0', b'"score": 0.5'), Hints, max_bytes=10_000, tolerant=True)
    assert refused.value.code == "bad_schema"


def test_inline_bytes_wrapped_at_76_columns_decode_wherever_the_image_is_read():
    """The ``base64`` tool's output: the classifier and the trainer (which stores the post) read the same bytes."""
    import base64
    import textwrap

    from streamcore.schemas import ImageSource

    data = bytes(range(256)) * 4
    wrapped = "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 76)) + "\n"
    assert ImageSource(b64=wrapped).raw_bytes() == data
