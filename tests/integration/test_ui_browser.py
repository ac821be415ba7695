"""The review page in headless Chromium against the real broker, Redis, classifier and trainer: a produced post
appears within seconds, a correction made on the page reaches ``feedback`` and the trainer counts it (also one
saying a photo shows no garment, where the model can learn that), a hostile
caption is shown as text and runs nothing, writes without the token or the CSRF token are refused, and the
model page shows a rollback the live guard made, with its reason."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from serving.ontology import load_ontology
from serving.promotion import promote
from streamcore.metrics import StageMetrics
from streamcore.schemas import Feedback
from streamcore.serde import encode
from tests.support import publish_tiny, wait_until
from training.guard import LiveGuard
from training.synthetic.posts import generate_posts
from workers.benchmarks.ui import _replay
from workers.ui.browser import chromium_missing, headless_chromium
from workers.ui.server import serving

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))]

TOKEN = "correct horse battery staple"
#: A caption that would run script, load an image with a handler, or end the page's markup if it were markup.
EVIL = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"> </main> red dress"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    driver = headless_chromium()
    yield driver
    driver.quit()


def _open(browser, url: str) -> None:
    """``url`` as a first visit: cookies are per host, not per port, so an earlier test's sign-in would carry over."""
    browser.get(url)
    browser.delete_all_cookies()
    browser.get(url)


def _card(browser, post_id: str):
    found = browser.find_elements(By.CSS_SELECTOR, f'article.card[data-id="{post_id}"]')
    return found[0] if found else None


def _ids(browser) -> list[str]:
    """Post ids of the labels in the list, top to bottom, those folded into a "more labels" line included (read in
    one go: the list changes under a slower reader)."""
    return browser.execute_script(
        "return [...document.querySelectorAll('article.card')].flatMap((c) => c.dataset.ids?.split(' ') ?? [c.dataset.id])")


def _text(browser, css: str) -> str:
    found = browser.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def _no_policy_violations(browser) -> None:
    messages = [e["message"] for e in browser.get_log("browser")]
    assert not [m for m in messages if "Content Security Policy" in m or "Uncaught" in m or "favicon" in m], messages


def _feedback_records(settings, count: int) -> list[Feedback]:
    consumer = KafkaConsumer(settings.kafka.topic("feedback"), bootstrap_servers=settings.kafka.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    records: list[Feedback] = []

    def enough() -> bool:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(Feedback.model_validate_json(r.value) for r in batch)
        return len(records) >= count

    try:
        wait_until(enough, timeout=30, what=f"{count} feedback records")
        consumer.poll(timeout_ms=1000)  # and no more than that
        records.extend(Feedback.model_validate_json(r.value) for b in consumer.poll(timeout_ms=1000).values()
                       for r in b)
    finally:
        consumer.close()
    return records


def _joined(group, proc) -> float:
    for line in group.metrics(proc).splitlines():
        if line.startswith('stylestream_trainer_feedback_total{result="joined"}'):
            return float(line.split()[-1])
    return 0.0


def _correction_form(browser, post_id: str):
    """Sign in and open the post's correction form."""
    browser.find_element(By.ID, "name").send_keys("tester")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "signin-button").click()
    wait_until(lambda: _text(browser, "#session-state") == "signed in", timeout=10, what="signed in")
    _card(browser, post_id).find_element(By.CSS_SELECTOR, "button.correct").click()
    wait_until(lambda: _card(browser, post_id).find_elements(By.CSS_SELECTOR, "form.correction"), timeout=10,
               what="the correction form")
    return _card(browser, post_id).find_element(By.CSS_SELECTOR, "form.correction")


def _correct(browser, post_id: str) -> str:
    """Sign in, open the post's correction form, pick a category, then a sub-category of another one (which takes
    its category along and leaves no sub-category of the one before), and an attribute, by typing; send it."""
    form = _correction_form(browser, post_id)
    # A one-garment model (the tiny one serving here) cannot learn that a photo shows none: no such button.
    assert not form.find_elements(By.CSS_SELECTOR, "button.no-garment")
    for kind, typed, want in (("categories", "dres", "dresses"), ("subcategories", "park", "parka"),
                              ("attributes", "cashm", "cashmere")):
        form.find_element(By.CSS_SELECTOR, f"input.search-{kind}").send_keys(typed)
        pick = f'.picker-{kind} li.suggestion[data-term="{want}"]'
        wait_until(lambda p=pick: form.find_elements(By.CSS_SELECTOR, p), timeout=10, what=f"suggestion {want}")
        form.find_element(By.CSS_SELECTOR, pick).click()
    form.find_element(By.CSS_SELECTOR, "button.send").click()
    wait_until(lambda: "received" in _text(browser, f'article.card[data-id="{post_id}"] .status'), timeout=30,
               what="the page to show the correction was received")
    return _text(browser, f'article.card[data-id="{post_id}"] .status')


def test_a_post_appears_its_correction_reaches_the_trainer_and_a_hostile_caption_stays_text(
        make_settings, workers, browser) -> None:
    settings = make_settings(ui_port=0, ui_token=TOKEN, trainer_min_feedback=1000, trainer_interval_s=86400)
    promote(settings, "tiny-test")  # a version serves: the trainer has no first model to bootstrap
    group = workers(settings)
    group.start("classify")
    trainer = group.start("trainer")
    group.wait_ready()
    (post, _), (evil, _) = generate_posts(load_ontology(), 2, seed=5, prefix=settings.kafka.group_prefix)
    evil = evil.model_copy(update={"caption": EVIL})
    with serving(settings) as url:
        _open(browser, url)
        wait_until(lambda: _text(browser, "#live-state") == "live", timeout=20, what="the page to go live")
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
        sent = time.monotonic()
        for p in (post, evil):
            producer.send(settings.kafka.topic("posts"), key=p.post_id.encode(), value=encode(p))
        producer.flush()
        producer.close()
        wait_until(lambda: _card(browser, post.post_id) and _card(browser, evil.post_id), timeout=60,
                   what="both posts on the page")
        # The posts wait up to hint_wait_ms (3 s) for hints no text stage sends, then are labelled.
        assert time.monotonic() - sent < 30

        caption = _card(browser, evil.post_id).find_element(By.CSS_SELECTOR, ".caption")
        assert caption.get_attribute("textContent") == EVIL
        assert browser.execute_script("return window.__pwned") is None
        assert browser.find_elements(By.CSS_SELECTOR, "#cards script, #cards img") == []
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no dialog opened
        wait_until(lambda: browser.execute_script(_PHOTO_SHOWN, post.post_id), timeout=10, what="the thumbnail to load")

        status = _correct(browser, post.post_id)
        [record] = _feedback_records(settings, 1)
        assert (record.post_id, record.categories, record.subcategories, record.attributes) == (
            post.post_id, ["coats"], ["parka"], ["cashmere"])
        assert record.schema_ == "feedback/v1" and record.sent_by == "tester"
        assert status.startswith("received: feedback record")
        wait_until(lambda: _joined(group, trainer) == 1, timeout=60, what="the trainer to count the correction")

        browser.find_element(By.ID, "f-corrected").click()  # "has corrections": only the corrected post is left
        wait_until(lambda: _ids(browser) == [post.post_id], timeout=20, what="the has-corrections filter")
        _no_policy_violations(browser)


_SCROLLED_TO = """
const id = arguments[0];
const card = document.querySelector(`article.card[data-id="${id}"]`)
  ?? [...document.querySelectorAll("article.card.more")].find((line) => line.dataset.ids.split(" ").includes(id));
card.scrollIntoView();
return card.querySelector(".thumb.loaded") !== null;
"""
_PHOTOS = "return document.querySelectorAll('article.card .thumb.loaded').length"
_PHOTO_SHOWN = "return document.querySelector(`article.card[data-id='${arguments[0]}'] .thumb.loaded`) !== null"
# Posts whose photos the page asked for (sheets of several posts' thumbnails).
_PHOTOS_FETCHED = """
return performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/thumbs?'))
  .flatMap((e) => new URL(e.name).searchParams.get('ids').split(',')).length
"""


def test_labels_below_the_fold_wait_in_one_line_without_photos_until_scrolled_to(make_settings, browser) -> None:
    """Building cards and fetching photos are most of what the page costs a browser: the labels a draw would push
    below the fold wait as one line with no photo fetched, and are drawn in full, photos and all, when scrolled to."""
    settings = make_settings(ui_port=0)
    with serving(settings) as url:
        _open(browser, url)
        browser.execute_script("performance.setResourceTimingBufferSize(10000)")
        wait_until(lambda: _text(browser, "#live-state") == "live", timeout=20, what="the page to go live")
        asyncio.run(_replay(settings, "F", rate=400.0, seconds=0.1, batch=40))
        wait_until(lambda: len(_ids(browser)) == 40, timeout=20, what="40 labels in the list")
        assert _ids(browser) == [f"F-{n}" for n in range(39, -1, -1)]
        wait_until(lambda: browser.execute_script(_PHOTO_SHOWN, "F-39"), timeout=10, what="the newest card's photo")
        assert 1 <= browser.execute_script(_PHOTOS) < 20
        line = browser.find_element(By.CSS_SELECTOR, "article.card.more")
        folded = line.get_attribute("data-ids").split(" ")
        assert "F-0" in folded and len(folded) > 20 and line.text == f"{len(folded)} more labels"
        assert not line.find_elements(By.CSS_SELECTOR, ".thumb")
        # Cards drawn above it push it down again: scroll to it until it stays in view, as a reader would.
        wait_until(lambda: browser.execute_script(_SCROLLED_TO, "F-0"), timeout=20,
                   what="the label scrolled to, drawn as a card with its photo")
        assert not browser.find_elements(By.CSS_SELECTOR, "article.card.more")
        assert _ids(browser) == [f"F-{n}" for n in range(39, -1, -1)]
        assert browser.execute_script(_PHOTOS_FETCHED) < 40


def test_paused_the_list_stays_counting_what_waits_and_resuming_draws_it(make_settings, browser) -> None:
    settings = make_settings(ui_port=0)
    with serving(settings) as url:
        _open(browser, url)
        wait_until(lambda: _text(browser, "#live-state") == "live", timeout=20, what="the page to go live")
        asyncio.run(_replay(settings, "A", rate=200.0, seconds=0.05, batch=10))
        wait_until(lambda: len(_ids(browser)) == 10, timeout=20, what="10 cards")
        browser.find_element(By.ID, "pause").click()
        asyncio.run(_replay(settings, "B", rate=200.0, seconds=0.1, batch=10))
        wait_until(lambda: _text(browser, "#live-state") == "paused · 20 new", timeout=20, what="20 labels waiting")
        assert _ids(browser) == [f"A-{n}" for n in range(9, -1, -1)]
        assert browser.find_element(By.ID, "pause").get_attribute("aria-pressed") == "true"
        browser.find_element(By.ID, "pause").click()
        wait_until(lambda: len(_ids(browser)) == 30, timeout=20, what="the waiting labels drawn")
        assert _ids(browser)[:20] == [f"B-{n}" for n in range(19, -1, -1)]
        assert _text(browser, "#live-state") == "live"
        _no_policy_violations(browser)


def test_a_photo_corrected_as_showing_no_garment_sends_a_correction_naming_nothing(make_settings, browser,
                                                                                   tmp_path) -> None:
    # An empty registry: the packaged multi-label model serves and is what the trainer continues.
    settings = make_settings(ui_port=0, ui_token=TOKEN, model_dir=tmp_path / "models")
    with serving(settings) as url:
        _open(browser, url)
        wait_until(lambda: _text(browser, "#live-state") == "live", timeout=20, what="the page to go live")
        asyncio.run(_replay(settings, "N", rate=100.0, seconds=0.03, batch=3))
        wait_until(lambda: _card(browser, "N-0"), timeout=20, what="the replayed labels")
        form = _correction_form(browser, "N-0")
        form.find_element(By.CSS_SELECTOR, "button.no-garment").click()
        wait_until(lambda: "received" in _text(browser, 'article.card[data-id="N-0"] .status'), timeout=30,
                   what="the page to show the correction was received")
        [record] = _feedback_records(settings, 1)
        assert (record.post_id, record.categories, record.subcategories, record.attributes) == ("N-0", [], [], [])
        assert record.no_garment and record.sent_by == "tester"
        _no_policy_violations(browser)


_WRITES = """
const [token, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const session = await (await fetch('/api/session')).json();
  const post = (path, body, csrf, type = 'application/json') => fetch(path, {method: 'POST',
    headers: Object.assign({'content-type': type}, csrf === null ? {} : {'x-csrf-token': csrf}),
    body: JSON.stringify(body)}).then((r) => r.status);
  const fix = {post_id: 'p1', categories: ['dresses']};
  const out = {};
  out.without_token = await post('/api/feedback', fix, session.csrf);
  out.wrong_token = await post('/api/session', {token: 'guess'}, session.csrf);
  out.sign_in_forged_csrf = await post('/api/session', {token}, 'forged');
  out.sign_in = await post('/api/session', {token}, session.csrf);
  out.forged_csrf = await post('/api/feedback', fix, 'forged');
  out.no_csrf = await post('/api/feedback', fix, null);
  out.form_encoded = await post('/api/feedback', fix, session.csrf, 'text/plain');
  out.good = await post('/api/feedback', fix, session.csrf);
  done(out);
})();
"""


def test_writes_without_the_token_or_with_a_wrong_csrf_token_are_refused(make_settings, browser) -> None:
    settings = make_settings(ui_port=0, ui_token=TOKEN)
    with serving(settings) as url:
        _open(browser, url)
        statuses = browser.execute_async_script(_WRITES, TOKEN)
    assert statuses == {"without_token": 401, "wrong_token": 401, "sign_in_forged_csrf": 403, "sign_in": 200,
                        "forged_csrf": 403, "no_csrf": 403, "form_encoded": 403, "good": 200}
    assert [f.post_id for f in _feedback_records(settings, 1)] == ["p1"]  # only the good write was sent


def test_the_model_page_shows_a_rollback_by_the_live_guard_with_its_reason(make_settings, browser) -> None:
    settings = make_settings(ui_port=0, trainer_guard_min_corrections=2)
    publish_tiny(settings.serving.model_dir, "v-new", seed=1)
    promote(settings, "tiny-test")
    promote(settings, "v-new", reason="tried by hand")
    client = redis.Redis.from_url(settings.redis.url)
    for n, version in enumerate(["tiny-test", "tiny-test", "v-new", "v-new"]):
        client.set(settings.redis.keys.label(f"p{n}"), json.dumps({"model_version": version,
                                                             "categories": [{"term": "dresses", "score": 0.9}]}))
    guard = LiveGuard(settings, client, StageMetrics("trainer"))
    guard.observe([Feedback(post_id="p0", categories=["dresses"]), Feedback(post_id="p1", categories=["dresses"]),
                   Feedback(post_id="p2", categories=["coats"]), Feedback(post_id="p3", categories=["coats"])])
    assert guard.check() == "tiny-test"
    with serving(settings) as url:
        _open(browser, url + "model")
        wait_until(lambda: _text(browser, "#serving") == "tiny-test", timeout=20, what="the model page")
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")]
        versions = {tr.find_element(By.CSS_SELECTOR, ".version").text: tr.find_elements(By.TAG_NAME, "td")[1].text
                    for tr in browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")}
        _no_policy_violations(browser)
    assert [(r[1], r[2]) for r in rows] == [("rollback", "tiny-test"), ("promotion", "v-new"), ("promotion", "tiny-test")]
    assert rows[0][3].startswith("live guard: corrections agree 0.00 (2) with v-new")
    assert rows[1][3] == "tried by hand" and rows[2][3] == "promoted by hand"
    assert versions == {"tiny-test": "100%", "v-new": "0%"}
