"""The review page's pure parts: mined words found in captions, cards from labels, filters, correction checks,
the CSRF rules and the security headers — no Redis, no broker, no browser."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
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


def test_a_correction_whose_sub_category_belongs_to_no_chosen_category_is_refused():
    with pytest.raises(Refused, match="overcoat"):
        check({"post_id": "p1", "categories": ["blouses_and_tunics"], "subcategories": ["overcoat"]}, ONTOLOGY,
              multi=False)
    kept = check({"post_id": "p1", "categories": ["coats"], "subcategories": ["overcoat"]}, ONTOLOGY, multi=False)
    assert kept.subcategories == ["overcoat"]


@pytest.mark.parametrize("sent_by", [5, ["ann"], {"name": "ann"}, True])
def test_a_name_that_is_not_text_is_refused_with_its_reason(sent_by):
    with pytest.raises(Refused, match="sent_by"):
        check({"post_id": "p1", "categories": ["coats"], "sent_by": sent_by}, ONTOLOGY, multi=False)


def test_highlights_count_as_the_pages_javascript_does_so_an_emoji_before_a_word_moves_nothing():
    caption = "\U0001F60D\U0001F60D love my new dress"
    shown = _card(_label(), caption=caption)
    (start, end), = shown["marks"]
    as_javascript = caption.encode("utf-16-le")[2 * start:2 * end].decode("utf-16-le")
    assert as_javascript == "dress"


def test_a_correction_saying_a_photo_shows_no_garment_names_nothing_and_needs_a_multi_label_model():
    none = check({"post_id": "p1", "categories": [], "subcategories": [], "attributes": []}, ONTOLOGY, multi=True)
    assert none.no_garment and (none.categories, none.subcategories, none.attributes) == ([], [], [])
    for bad in ({"post_id": "p1", "categories": [], "attributes": ["cashmere"]},
                {"post_id": "p1", "categories": [], "subcategories": ["blazer"]},
                {"post_id": "p1"}):  # no categories at all is a slip, not "no garment"
        with pytest.raises(Refused):
            check(bad, ONTOLOGY, multi=True)
    with pytest.raises(Refused, match="exactly one category"):
        check({"post_id": "p1", "categories": []}, ONTOLOGY, multi=False)


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
    assert not security.token_matches("", SecretStr("")) and not security.token_matches("", token)


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_token_leaves_the_page_read_only(monkeypatch, blank):
    from streamcore.settings import Settings

    monkeypatch.setenv("STYLESTREAM_UI_TOKEN", blank)
    assert Settings().ui.token is None
    monkeypatch.setenv("STYLESTREAM_UI_TOKEN", "s3cret")
    assert Settings().ui.token.get_secret_value() == "s3cret"


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_a_sheet_holds_each_thumbnail_in_its_cell_and_leaves_missing_or_broken_ones_grey():
    import io

    import numpy as np
    from PIL import Image

    from workers.ui.sheets import CELL, contact_sheet

    red, blue = _jpeg((220, 30, 30), (160, 120)), _jpeg((30, 30, 220), (120, 160))  # landscape, portrait
    pixels = np.asarray(Image.open(io.BytesIO(contact_sheet([red, None, blue, b"not a jpeg"]))).convert("RGB"))
    width, height = CELL
    assert pixels.shape == (height, 4 * width, 3)
    cells = [pixels[:, n * width:(n + 1) * width].reshape(-1, 3).mean(axis=0) for n in range(4)]
    assert cells[0][0] > 180 and cells[0][2] < 80  # red, filling its cell (cropped, not letterboxed)
    assert cells[2][2] > 180 and cells[2][0] < 80
    for grey in (cells[1], cells[3]):
        assert np.all(np.abs(grey - 238) < 8)


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own niceness is Linux's")
def test_the_page_servers_thread_yields_the_cpu_and_the_rest_of_the_process_keeps_its_priority():
    from workers.ui.server import _lower_priority

    before, seen = os.getpriority(os.PRIO_PROCESS, 0), {}

    def serve() -> None:
        _lower_priority(10, thread=True)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    assert seen["nice"] >= 10 > before or before >= 10
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


class _Reader:
    """Stands in for the labels stream: hands out what was "written" since the last look."""

    def __init__(self, written: list[list[str]]) -> None:
        self.written, self.looks = written, 0

    async def last_id(self):
        return (0, 0)

    async def after(self, last, *, block_ms, count):
        self.looks += 1
        if not self.written:
            await asyncio.sleep(0.05 if block_ms is None else 10)
            return []
        from workers.ui.store import Entry

        return [Entry((self.looks, n), post, b"{}") for n, post in enumerate(self.written.pop(0))]

    async def cards(self, entries):
        return [{"id": e.post_id} for e in entries]


def test_new_labels_reach_pages_in_batches_a_trickle_by_time_a_flood_by_size():
    from workers.ui.live import Broadcaster

    async def batches(written: list[list[str]], **pace) -> list[int]:
        total = sum(map(len, written))
        broadcaster = Broadcaster(_Reader(written), **pace)
        viewer = broadcaster.join()
        await broadcaster.start()
        got: list[int] = []
        while sum(got) < total:
            got.append(len(await asyncio.wait_for(viewer.queue.get(), timeout=10)))
        await broadcaster.stop()
        return got

    trickle = [[f"t{n}-{k}" for k in range(3)] for n in range(6)]
    assert asyncio.run(batches([list(w) for w in trickle], gap_s=0.3, look_s=0.01)) != [3] * 6  # gathered
    flood = [[f"f{n}-{k}" for k in range(60)] for n in range(4)]
    started = time.monotonic()
    sizes = asyncio.run(batches([list(w) for w in flood], gap_s=3.0, look_s=0.01, batch=100))
    # The first labels after a quiet spell go at once; then batches go out as they fill, not a gap apart.
    assert sizes[0] == 60 and sizes[1] >= 100 and time.monotonic() - started < 2 * 3.0


def _streamed(chunks: list[bytes], headers: dict[str, str]) -> Request:
    parts = iter(chunks)
    taken = []

    async def receive():
        chunk = next(parts, None)
        taken.append(chunk)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    request = Request({"type": "http", "method": "POST", "path": "/api/session", "query_string": b"",
                       "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}, receive)
    request.taken = taken
    return request


def test_a_write_body_over_the_limit_is_refused_without_reading_it_whole():
    from workers.ui.routes import MAX_BODY, TooLarge, _body

    assert asyncio.run(_body(_streamed([b'{"token": "t"}'], {}))) == {"token": "t"}
    declared = _streamed([b"x" * 1024] * 1000, {"content-length": str(1024 * 1000)})
    with pytest.raises(TooLarge):
        asyncio.run(_body(declared))
    assert declared.taken == []
    undeclared = _streamed([b"x" * 1024] * 1000, {})
    with pytest.raises(TooLarge):
        asyncio.run(_body(undeclared))
    assert len(undeclared.taken) <= MAX_BODY // 1024 + 1


def test_a_correction_the_broker_took_is_received_even_when_its_copy_beside_the_label_is_not_kept():
    from redis.exceptions import ConnectionError as RedisDown

    from streamcore.schemas import Feedback
    from streamcore.settings import Settings
    from workers.ui.corrections import Publisher

    sent = []

    class Producer:
        async def send_and_wait(self, topic, value, key):
            sent.append(key)

            class Where:
                partition, offset = 2, 41
            Where.topic = topic
            return Where

    class Redis:
        async def set(self, *args, **kwargs):
            raise RedisDown("Redis is down")

    publisher = Publisher(Settings.named(), Redis())
    publisher._producer = Producer()
    answer = asyncio.run(publisher.send(Feedback(post_id="p1", categories=["coats"])))
    assert (answer["partition"], answer["offset"], answer["kept"]) == (2, 41, False)
    assert sent == [b"p1"]  # one record: nothing tells the person to send it again


def test_the_forms_choices_say_whether_several_categories_are_allowed_as_the_serving_model_now_does(monkeypatch):
    import json
    from types import SimpleNamespace

    from workers.ui import routes
    from workers.ui.corrections import terms

    answers = iter([True, False])

    async def corrections_multi(settings, redis):
        return next(answers)

    monkeypatch.setattr(routes, "corrections_multi", corrections_multi)
    app = SimpleNamespace(state=SimpleNamespace(ui=SimpleNamespace(settings=None, redis=None, terms=terms(ONTOLOGY))))
    request = Request({"type": "http", "method": "GET", "path": "/api/ontology", "query_string": b"", "headers": [],
                       "app": app})
    first, second = (asyncio.run(routes.ontology(request)) for _ in range(2))
    assert [json.loads(r.body)["multi"] for r in (first, second)] == [True, False]  # a promotion between two opens
    assert json.loads(first.body)["categories"] == ONTOLOGY.category_names
    assert "no-store" in first.headers["cache-control"]
