"""Error classes, bounded dead letters, stuck streaks and the repeat filter, without a broker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import random

import aiokafka.errors
import kafka.errors
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError

from streamcore import faults
from streamcore import kafka as kafka_module
from streamcore.exceptions import BadInput
from streamcore.faults import Original, RepeatFilter, Streaks, backoff, bounded_letter, rejection
from streamcore.kafka import TopicWatch
from streamcore.metrics import StageMetrics
from streamcore.schemas import DeadLetter
from streamcore.serde import encode
from streamcore.settings import Settings


@pytest.mark.parametrize(("error", "code"), [
    (aiokafka.errors.MessageSizeTooLargeError(), "output_too_large"),
    (kafka.errors.MessageSizeTooLargeError(), "output_too_large"),
    (aiokafka.errors.RecordTooLargeError(), "output_too_large"),
    (aiokafka.errors.CorruptRecordException(), "output_invalid"),
    (kafka.errors.InvalidRecordError(), "output_invalid"),
    (aiokafka.errors.TopicAuthorizationFailedError(), "output_unauthorized"),
    (NoPermissionError("NOPERM"), "output_unauthorized"),
    (aiokafka.errors.KafkaTimeoutError(), None),
    (aiokafka.errors.UnknownTopicOrPartitionError(), None),
    (aiokafka.errors.NotLeaderForPartitionError(), None),
    (kafka.errors.KafkaConnectionError(), None),
    (RedisConnectionError("down"), None),
    (ResponseError("OOM command not allowed when used memory > 'maxmemory'"), None),  # frees up: retried
])
def test_errors_are_permanent_only_where_a_retry_would_meet_them_again(error, code):
    assert rejection(error) == code


def test_backoff_grows_to_its_ceiling_with_jitter_in_the_upper_half():
    delays = backoff(0.1, 5.0, rng=random.Random(3))
    drawn = [next(delays) for _ in range(12)]
    nominal = [min(0.1 * 2**i, 5.0) for i in range(12)]
    assert all(n / 2 <= d <= n for d, n in zip(drawn, nominal))
    assert len(set(drawn)) == len(drawn)  # jittered, not the nominal steps


def _original(size: int) -> Original:
    return Original("t.posts", 2, 77, b"post-1", bytes(range(256)) * (size // 256) + b"x" * (size % 256))


@pytest.mark.parametrize("limit", [1_000_000, 64 * 1024, 5000])
def test_a_letter_fits_the_limit_and_describes_the_whole_original(limit):
    original = _original(8 * 1024 * 1024)
    letter = bounded_letter(original, BadInput("too_large", "8 MB post"), stage="classify", limit=limit)
    assert len(encode(letter)) + len(original.key) <= limit
    kept = base64.b64decode(letter.original)
    assert 0 < len(kept) < len(original.value) and original.value.startswith(kept)
    assert letter.original_bytes == len(original.value)
    assert letter.original_sha256 == hashlib.sha256(original.value).hexdigest()
    assert (letter.topic, letter.partition, letter.offset) == ("t.posts", 2, 77)
    assert f"truncated to {len(kept)} of {len(original.value)} bytes" in letter.detail
    assert DeadLetter.model_validate_json(encode(letter)) == letter


def test_a_small_original_goes_whole_and_the_second_try_goes_without_it():
    original = _original(300)
    whole = bounded_letter(original, BadInput("bad_image", "x"), stage="classify", limit=1_000_000)
    assert base64.b64decode(whole.original) == original.value and whole.detail == "x"
    bare = bounded_letter(original, BadInput("bad_image", "x"), stage="classify", limit=1_000_000,
                          keep_original=False)
    assert bare.original == "" and bare.original_bytes == 300 and "truncated to 0 of 300" in bare.detail


def test_streaks_report_the_oldest_open_one_until_it_ends():
    now = [100.0]
    streaks = Streaks(clock=lambda: now[0])
    assert streaks.oldest() is None
    first = streaks.begin("label_write", RedisConnectionError("down"))
    now[0] = 130.0
    second = streaks.begin("commit", aiokafka.errors.KafkaTimeoutError())
    streaks.failed_again(first, RedisConnectionError("still down"))
    now[0] = 160.0
    assert streaks.oldest() == ("label_write", 60.0, "ConnectionError: still down")
    streaks.end(first)
    assert streaks.oldest()[:2] == ("commit", 30.0)
    streaks.end(second)
    streaks.end(None)
    assert streaks.oldest() is None


def _record(msg: str, *args, level: int = logging.WARNING, name: str = "aiokafka.consumer", **extra):
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_repeat_filter_passes_the_first_then_one_per_window_with_the_count():
    now = [0.0]
    repeat = RepeatFilter(30.0, clock=lambda: now[0])
    passed = []
    for i in range(900):  # a 10 s outage at 90 lines a second
        now[0] = i / 90
        record = _record("OffsetCommit failed for group %s: %s", "g", i)
        if repeat.filter(record):
            passed.append(record.getMessage())
    assert passed == ["OffsetCommit failed for group g: 0"] and repeat.suppressed == 899
    now[0] = 31.0
    record = _record("OffsetCommit failed for group %s: %s", "g", "later")
    assert repeat.filter(record)
    assert record.getMessage() == "OffsetCommit failed for group g: later [899 more like this in the last 30 s]"
    assert repeat.filter(_record("OffsetCommit failed for group %s: %s", "g", 1, level=logging.INFO))  # INFO passes


def test_repeat_filter_tells_kinds_apart_by_template_logger_level_and_key():
    repeat = RepeatFilter(30.0, clock=lambda: 0.0)
    assert repeat.filter(_record("a %s", 1))
    assert not repeat.filter(_record("a %s", 2))
    assert repeat.filter(_record("b %s", 1))
    assert repeat.filter(_record("a %s", 1, name="redis"))
    assert repeat.filter(_record("a %s", 1, level=logging.ERROR))
    assert repeat.filter(_record("a %s", 1, repeat_key="label_write RedisError"))
    assert not repeat.filter(_record("a %s", 2, repeat_key="label_write RedisError"))


class _Listing:
    """A consumer whose broker lists ``topics``."""

    def __init__(self, topics: set[str]) -> None:
        self.listed = topics

    async def topics(self) -> set[str]:
        return set(self.listed)


def test_missing_topics_are_created_again_when_allowed(monkeypatch):
    settings = Settings.named(topic_prefix="p.", partitions=3)
    consumer, created = _Listing({"p.posts"}), []

    def ensure(s, names):
        created.extend(names)
        consumer.listed |= {s.kafka.topic(n) for n in names}
        return [s.kafka.topic(n) for n in names]

    monkeypatch.setattr(kafka_module, "ensure_topics", ensure)
    counted = []
    watch = TopicWatch(settings, ("posts", "hints", "labels"), counted.append, owner="classify")
    asyncio.run(watch.check(consumer))
    assert created == ["hints", "labels"] and counted == [2] and watch.problem is None
    asyncio.run(watch.check(consumer))  # not due yet: no second look
    assert counted == [2]


def test_missing_topics_make_one_clear_problem_when_creating_them_is_not_allowed(monkeypatch, caplog):
    settings = Settings.named(topic_prefix="p.", recreate_topics=False, topic_check_s=0.01)
    monkeypatch.setattr(kafka_module, "ensure_topics", lambda *a: pytest.fail("created although not allowed"))
    watch = TopicWatch(settings, ("posts", "labels"), lambda n: None, owner="classify")
    with caplog.at_level(logging.ERROR, logger="streamcore.kafka"):
        for _ in range(3):
            asyncio.run(watch.check(_Listing({"p.posts"}), force=True))
    assert watch.problem.startswith("topics missing: p.labels")
    assert [r.getMessage() for r in caplog.records] == [f"classify: {watch.problem}"]  # said once
    asyncio.run(watch.check(_Listing({"p.posts", "p.labels"}), force=True))
    assert watch.problem is None


def test_the_installed_filter_bounds_a_library_flood_and_the_metric_counts_what_it_held_back(monkeypatch):
    monkeypatch.setattr(faults, "_INSTALLED", [])
    root, stream = logging.getLogger(), io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(root, "handlers", [handler])  # pytest's own handlers stay unfiltered
    faults.install_repeat_filter()
    faults.install_repeat_filter()  # once per handler, however often it is called
    assert len(handler.filters) == 1
    noisy = logging.getLogger("aiokafka.consumer.group_coordinator")
    for _ in range(500):
        noisy.error("OffsetCommit failed for group %s due to group error (%s), will rejoin", "g", "Unknown")
    assert stream.getvalue().count("\n") == 1
    metrics = StageMetrics("classify")
    assert metrics.registry.get_sample_value("stylestream_log_lines_suppressed_total") == 499


@pytest.mark.parametrize("limit", [1_000_000, 64 * 1024])
def test_a_key_of_megabytes_goes_as_its_digest_so_the_letter_still_fits(limit):
    key = b"k" * (8 * 1024 * 1024)
    original = Original("t.posts", 0, 5, key, b"")
    sent_key = original.letter_key()
    assert sent_key == hashlib.sha256(key).hexdigest().encode()
    for keep in (True, False):
        letter = bounded_letter(original, BadInput("empty", "no value"), stage="classify", limit=limit,
                                keep_original=keep)
        assert len(encode(letter)) + len(sent_key) <= limit
        assert f"SHA-256 of its {len(key)}-byte key" in letter.detail
    assert _original(10).letter_key() == b"post-1" and Original("t", 0, 0, None, b"").letter_key() is None


def test_an_output_partition_the_topic_lacks_is_the_brokers_fault_retried_never_a_dead_letter():
    import asyncio

    from streamcore.faults import INFRA_ERRORS, rejection
    from streamcore.sinks import PartitionMissing, produce_by_partition

    class Producer:  # as aiokafka's: it asserts that the topic has the partition asked for
        def create_batch(self):
            class Batch:
                def append(self, **kw):
                    return object()
            return Batch()

        async def send_batch(self, batch, topic, *, partition):
            assert partition < 4, "Unrecognized partition"

    with pytest.raises(PartitionMissing, match="hints has no partition 5") as missing:
        asyncio.run(produce_by_partition(Producer(), "hints", [(5, b"k", b"v")]))
    assert isinstance(missing.value, INFRA_ERRORS) and rejection(missing.value) is None
