"""The trainer's durable state in Redis: posts and corrections bounded, replays stored once, corrections that
wait for their post."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from serving.ontology import load_ontology
from training.feedback import Example, StoredPost
from training.state import Held, RunStatus, TrainerState
from training.synthetic.posts import generate_posts

pytestmark = pytest.mark.integration


def test_the_state_store_is_bounded_and_stores_a_replayed_correction_once(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path)
    client = redis.Redis.from_url(settings.redis.url)
    state = TrainerState(client, prefix=settings.redis.prefix, model_current=settings.redis.keys.model_current,
                         max_posts=2, max_examples=2)
    posts = [StoredPost.from_post(p, settings, image_size=288)
             for p, _ in generate_posts(load_ontology(), 3, seed=4, prefix="st")]
    state.put_posts(posts)
    assert state.posts() == 2 and state.post(posts[0].post_id) is None  # bounded: the oldest went first
    # Kept as a JPEG: the same picture within its loss (about 1.5 of 255 on a 288 px photo).
    kept = state.post(posts[2].post_id).pixels
    assert kept.shape == posts[2].pixels.shape and np.abs(kept.astype(int) - posts[2].pixels).mean() < 4

    def example(i: int) -> Example:
        row = np.zeros(4, np.float32)
        row[i % 4] = 1
        return Example(posts[2].pixels, row, row, row, row, row, f"caption {i}")

    assert state.put_example("a", example(0)) and not state.put_example("a", example(0))  # replay: once
    assert state.put_example("a", example(1))  # a later correction of the same post replaces it
    assert state.status().pending == 2 and not state.status().serving and not state.status().finished
    assert state.put_example("b", example(2)) and state.put_example("c", example(3))
    examples, absorbed = state.snapshot()
    assert absorbed == 4 and [e.caption for e in examples] == ["caption 2", "caption 3"]  # bounded, oldest first
    state.finish_run(absorbed, next_run_at=123.0)
    assert state.status() == RunStatus(0, 123.0, None, False, finished=True)


def test_a_correction_waits_for_its_post_bounded_and_once(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path)
    state = TrainerState(redis.Redis.from_url(settings.redis.url), prefix=settings.redis.prefix,
                         model_current=settings.redis.keys.model_current, max_posts=5, max_examples=2)
    post = next(StoredPost.from_post(p, settings, image_size=64)
                for p, _ in generate_posts(load_ontology(), 1, seed=5, prefix="held"))
    assert state.hold("a", b"1") == Held(stored=False, new=True)
    assert state.hold("a", b"1") == Held(stored=False, new=False)  # a replay: held once
    assert state.hold("a", b"2") == Held(stored=False, new=True)  # a revision replaces it
    assert state.hold("b", b"3").new and state.hold("c", b"4") == Held(stored=False, new=True, dropped=1)
    assert state.waiting(["a", "b", "c", "x"]) == {"b": b"3", "c": b"4"}  # bounded: the oldest went first
    state.release("b", b"other")  # replaced since it was read: kept
    state.release("c", b"4")
    assert state.waiting(["b", "c"]) == {"b": b"3"} and state.counts() == (0, 1)
    state.put_posts([post])
    assert state.hold(post.post_id, b"5") == Held(stored=True)  # the post is stored: join now, hold nothing
    assert state.counts() == (1, 1)
