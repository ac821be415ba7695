"""The review page's pure parts: mined words found in captions, cards from labels, filters, correction checks,
the CSRF rules and the security headers — no Redis, no broker, no browser."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from serving.ontology import load_ontology
from streamcore.schemas import HintsUsed, Label, ScoredTerm, utcnow
from streamcore.serde import encode
from workers.ui import security
from workers.ui.cards import Filters, Highlighter, card
from workers.ui.corrections import Refused, check

ONTOLOGY = load_ontology()
HIGHLIGHT = Highlighter(ONTOLOGY)


def _label(*, top: float = 0.8, abstain: bool = False, source: str = "mined", version: str = "v1") -> bytes:
    now = utcnow()
    categories = [] if abstain else [ScoredTerm(term="dresses", score=top), ScoredTerm(term="coats", score=1 - top)]
    return encode(Label(post_id="p1", model_version=version, head="fusion", categories=categories, subcategories=[],
                        attributes=[], hints_used=HintsUsed(source=source, categories=["dresses"]),
                        received_at=now - timedelta(milliseconds=250), labeled_at=now,
                        abstain="no_garment" if abstain else None))


def _card(label: bytes, **kw):
    return card(label, **{"caption": "Red dresses today #summerdress, not a dressage horse", "thumb": True,
                          "correction": None, "corrected": False, "highlighter": HIGHLIGHT, **kw})


def test_the_words_of_hinted_categories_are_found_in_words_and_hashtags():
    caption = "Red dresses today #summerdress, not a dressage horse"
    spans = HIGHLIGHT.spans(caption, ["dresses"])
    assert [caption[a:b] for a, b in spans] == ["dresses", "dress"]
    assert HIGHLIGHT.spans(caption, ["coats"]) == [] and HIGHLIGHT.spans(caption, ["no-such"]) == []
    other = "A TRENCH coat"
    assert [other[a:b] for a, b in HIGHLIGHT.spans(other, ["coats"])] == ["TRENCH", "coat"]


def test_a_card_carries_what_the_page_shows_and_marks_only_mined_hints():
    shown = _card(_label())
    assert shown["id"] == "p1" and shown["version"] == "v1" and shown["top"] == pytest.approx(0.8)
    assert shown["latency_ms"] == 250 and shown["abstain"] is None and shown["thumb"]
    assert shown["marks"] and shown["categories"][0][0] == "dresses"
    assert _card(_label(source="predicted"))["marks"] == []
    assert _card(_label(abstain=True))["abstain"] == "no_garment"
    assert _card(b'{"not": "a label"}') is None
    assert _card(_label(), correction={"categories": ["coats"]})["corrected"]


@pytest.mark.parametrize(("filters", "kept"), [
    (Filters(), {"sure", "unsure", "abstained", "v2"}),
    (Filters(category="dresses"), {"sure", "unsure", "v2"}),
    (Filters(version="v2"), {"v2"}),
    (Filters(low_confidence=0.5), {"unsure"}),
    (Filters(abstained=True), {"abstained"}),
    (Filters(corrected=True), {"v2"}),
])
def test_filters_keep_the_cards_they_name(filters, kept):
    cards = {"sure": _card(_label()), "unsure": _card(_label(top=0.3)), "abstained": _card(_label(abstain=True)),
             "v2": _card(_label(version="v2"), corrected=True)}
    assert {name for name, c in cards.items() if filters.keeps(c)} == kept


def test_filters_from_the_query_string_refuse_what_the_page_never_sends():
    assert Filters.from_query({"low": "0.4", "abstained": "1", "category": "coats"}) == Filters(
        category="coats", low_confidence=0.4, abstained=True)
    for bad in ({"low": "2"}, {"low": "x"}, {"category": "c" * 200}):
        with pytest.raises(ValueError):
            Filters.from_query(bad)


def test_a_correction_names_known_terms_and_one_category_for_a_one_garment_model():
    good = check({"post_id": "p1", "categories": ["coats"], "attributes": ["cashmere"], "sent_by": " ann "}, ONTOLOGY,
                 multi=False)
    assert (good.categories, good.sent_by, good.schema_) == (["coats"], "ann", "feedback/v1")
    assert check({"post_id": "p1", "categories": ["coats"]}, ONTOLOGY, multi=False).sent_by == "review page"
    assert check({"post_id": "p1", "categories": ["coats", "dresses"]}, ONTOLOGY, multi=True).categories == [
        "coats", "dresses"]
    for bad in ([], {"post_id": "p1", "categories": ["coats", "dresses"]}, {"post_id": "p1", "categories": ["hats!"]},
                {"post_id": "p 1", "categories": ["coats"]}, {"post_id": "p1", "categories": []},
                {"post_id": "p1", "categories": ["coats"], "attributes": ["cashmere", "cashmere"]}):
        with pytest.raises(Refused):
            check(bad, ONTOLOGY, multi=False)


def _request(headers: dict[str, str], cookie: str | None = "t0ken") -> Request:
    headers = {"host": "127.0.0.1:8790", **headers}
    if cookie is not None:
        headers["cookie"] = f"{security.CSRF_COOKIE}={cookie}"
    return Request({"type": "http", "method": "POST", "path": "/api/feedback", "scheme": "http", "query_string": b"",
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})


def test_writes_need_the_csrf_cookie_echoed_json_and_the_pages_origin():
    good = {"content-type": "application/json", security.CSRF_HEADER: "t0ken"}
    assert security.write_refusal(_request(good)) is None
    assert security.write_refusal(_request({**good, "origin": "http://127.0.0.1:8790"})) is None
    refused = [_request({**good, "origin": "http://evil.example"}), _request({**good, security.CSRF_HEADER: "other"}),
               _request({**good, "content-type": "text/plain"}), _request({"content-type": "application/json"}),
               _request(good, cookie=None)]
    assert all(security.write_refusal(r) for r in refused)


def test_every_response_carries_a_strict_content_security_policy():
    async def app(scope, receive, send):
        await PlainTextResponse("hi")(scope, receive, send)

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(security.SecurityHeaders(app)({"type": "http", "method": "GET", "path": "/", "headers": []},
                                              None, send))
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_the_sign_in_cookie_is_derived_from_the_token_and_does_not_reveal_it():
    token = SecretStr("s3cret")
    value = security.session_value(token)
    assert "s3cret" not in value and value != security.session_value(SecretStr("other"))
    assert security.token_matches("s3cret", token) and not security.token_matches("s3cre", token)
    assert not security.token_matches("s3cret", None)
