"""The commands that move records: ``produce --file`` (a file or standard input of post/v1 lines), ``tail --json``
(label/v1 lines), ``classify PHOTO`` (one label with no broker) and ``correct`` (feedback/v1), against the real
embedded broker and Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from jsonschema import Draft202012Validator
from kafka import KafkaConsumer, KafkaProducer
from typer.testing import CliRunner

from streamcore.schemas import Feedback, Label, Post
from workers.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schemas" / "examples"
PHOTO = ROOT / "training" / "real" / "data" / "fixture" / "images" / "fdbc4a3c-4902-45ac-a10e-b641e3ebb0d4.jpg"


def _env(settings) -> dict[str, str]:
    return {"STYLESTREAM_KAFKA": settings.kafka.bootstrap, "STYLESTREAM_TOPIC_PREFIX": settings.kafka.topic_prefix}


def _posts_on_topic(settings) -> dict[str, Post]:
    reader = KafkaConsumer(settings.kafka.topic("posts"), bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest",
                           consumer_timeout_ms=4000)
    posts = {r.key.decode(): Post.model_validate_json(r.value) for r in reader}
    reader.close()
    return posts


@pytest.mark.integration
def test_produce_file_sends_each_valid_post_and_names_the_lines_it_refused(make_settings, tmp_path) -> None:
    settings = make_settings()
    good = [(EXAMPLES / name).read_text().strip() for name in ("post.v1.b64.json", "post.v1.path.json")]
    two_sources = (EXAMPLES / "invalid" / "post.v1.two-sources.json").read_text().strip()
    absolute = json.dumps(json.loads(good[1]) | {"post_id": "abs", "image": {"path": "/etc/shadow"}})
    lines = tmp_path / "posts.jsonl"
    # A byte-order mark before the first line, and a line that is not UTF-8 before the last one.
    lines.write_bytes(b"\xef\xbb\xbf" + "\n".join([good[0], "", two_sources, "{not json", absolute]).encode()
                      + b"\ncaf\xe9\n" + good[1].encode() + b"\n")
    result = CliRunner().invoke(app, ["produce", "--file", str(lines)], env=_env(settings))
    assert result.exit_code == 1, result.output
    assert sorted(_posts_on_topic(settings)) == ["look-0001", "shop:sku-7731"]
    refused = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [line.split()[1] for line in refused] == ["3", "4", "5", "6"]
    assert "exactly one of b64/url/path" in refused[0] and "bad_json" in refused[1] and "image root" in refused[2]
    assert "bad_encoding" in refused[3]
    assert "produced 2 posts" in result.stdout


@pytest.mark.integration
def test_produce_from_standard_input_exits_0_when_every_post_is_sent(make_settings) -> None:
    settings = make_settings()
    result = CliRunner().invoke(app, ["produce", "--file", "-"], env=_env(settings),
                                input=(EXAMPLES / "post.v1.url.json").read_text())
    assert result.exit_code == 0, result.output
    assert list(_posts_on_topic(settings)) == ["look-0002"]


@pytest.mark.integration
def test_tail_prints_a_records_text_as_text_and_a_time_without_offset_as_unknown(make_settings) -> None:
    settings = make_settings()
    label = json.loads((EXAMPLES / "label.v1.json").read_text())
    odd = [label | {"post_id": "[/x]", "model_version": "[bold]v9[/bold]"},
           label | {"post_id": "naive", "received_at": "2026-01-01T00:00:00",
                    "categories": [{"term": "[/]", "score": 0.9}]}]
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for record in odd:
        producer.send(settings.kafka.topic("labels"), key=record["post_id"].encode(), partition=0,
                      value=json.dumps(record).encode())
    producer.flush()
    producer.close()
    result = CliRunner().invoke(app, ["tail", "--from-beginning", "--count", "2"], env=_env(settings))
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("[/x] ") and "[bold]v9[/bold]" in first
    assert second.startswith("naive [/] 0.90") and "? ms" in second


@pytest.mark.integration
def test_tail_json_prints_one_label_record_per_line(make_settings) -> None:
    settings = make_settings()
    label = json.loads((EXAMPLES / "label.v1.json").read_text())
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for post_id, extra in (("a", {}), ("b", {"new_field": 1})):
        producer.send(settings.kafka.topic("labels"), key=post_id.encode(), partition=0,
                      value=json.dumps(label | {"post_id": post_id} | extra).encode())
    producer.flush()
    producer.close()
    result = CliRunner().invoke(app, ["tail", "--json", "--from-beginning", "--count", "2"], env=_env(settings))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["post_id"] for r in records] == ["a", "b"]
    assert records[1]["new_field"] == 1 and records[0]["categories"] == label["categories"]


def test_classify_prints_one_label_of_the_photo_without_a_broker(tmp_path) -> None:
    env = {"STYLESTREAM_KAFKA": "127.0.0.1:1", "STYLESTREAM_MODEL_DIR": str(tmp_path / "empty-registry")}
    result = CliRunner().invoke(app, ["classify", str(PHOTO), "--caption", "my new floral maxi dress #ootd",
                                      "--post-id", "look-0001"], env=env)
    assert result.exit_code == 0, result.output
    line, = result.stdout.splitlines()
    label = Label.model_validate_json(line)
    Draft202012Validator(json.loads((ROOT / "schemas" / "label.v1.json").read_text())).validate(json.loads(line))
    assert label.post_id == "look-0001" and label.hints_used.source == "mined"
    assert label.categories or label.abstain == "no_garment"


def _feedback_on_topic(settings) -> list[Feedback]:
    reader = KafkaConsumer(settings.kafka.topic("feedback"), bootstrap_servers=settings.kafka.bootstrap,
                           auto_offset_reset="earliest", consumer_timeout_ms=4000)
    records = [Feedback.model_validate_json(r.value) for r in reader]
    reader.close()
    return records


@pytest.mark.integration
def test_correct_sends_what_the_photo_shows_or_that_it_shows_no_garment_and_refuses_what_the_model_cannot_learn(
        make_settings, tmp_path) -> None:
    # An empty registry: the packaged multi-label model serves and is what the trainer continues.
    settings = make_settings(model_dir=tmp_path / "models")
    env = {**_env(settings), "STYLESTREAM_REDIS_URL": settings.redis.url, "STYLESTREAM_REDIS_PREFIX": settings.redis.prefix,
           "STYLESTREAM_MODEL_DIR": str(tmp_path / "models")}
    sent = CliRunner().invoke(app, ["correct", "p1", "jackets", "jeans", "--sub", "leather_jacket", "--attr", "leather",
                                    "--by", "ann"], env=env)
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.startswith("feedback ") and sent.stdout.strip().endswith("jackets, jeans")
    assert "no label is stored for p1" in sent.stderr  # sent all the same
    none = CliRunner().invoke(app, ["correct", "p2", "--no-garment"], env=env)
    assert none.exit_code == 0 and "shows no garment" in none.stdout, none.output
    for bad, why in ((["p3", "hats"], "not in the ontology"), (["p3"], "or --no-garment"),
                     (["p3", "bags", "--no-garment"], "not both"), (["p3", "--no-garment", "--attr", "leather"], "names no"),
                     (["p 3", "bags"], "post_id")):
        refused = CliRunner().invoke(app, ["correct", *bad], env=env)
        assert refused.exit_code != 0 and why in refused.output, (bad, refused.output)
    records = _feedback_on_topic(settings)
    assert [(f.post_id, f.categories, f.subcategories, f.attributes, f.sent_by) for f in records] == [
        ("p1", ["jackets", "jeans"], ["leather_jacket"], ["leather"], "ann"), ("p2", [], [], [], "stylestream correct")]

    # A single-label model serving: one category, and no "no garment".
    single = make_settings()
    env = {**_env(single), "STYLESTREAM_REDIS_URL": single.redis.url, "STYLESTREAM_REDIS_PREFIX": single.redis.prefix,
           "STYLESTREAM_MODEL_DIR": str(single.serving.model_dir)}
    redis.Redis.from_url(single.redis.url).set(single.redis.keys.model_current, "tiny-test")
    for bad in (["p4", "jackets", "jeans"], ["p4", "--no-garment"]):
        refused = CliRunner().invoke(app, ["correct", *bad], env=env)
        assert refused.exit_code != 0 and "exactly one category" in refused.output, refused.output
    assert _feedback_on_topic(single) == []
