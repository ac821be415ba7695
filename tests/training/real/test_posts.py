"""Demo posts: real fixture photos, valid ``post/v1``, with a caption about a garment the photo shows."""

from __future__ import annotations

import base64
from pathlib import Path

from serving.ontology import load_ontology
from streamcore.schemas import Post
from training.real.fixture import fixture_records
from training.real.posts import fixture_posts

ONTOLOGY = load_ontology()


def test_posts_carry_fixture_photos_named_in_their_ids():
    by_stem = {Path(r.image).stem[:8]: r for r in fixture_records(ONTOLOGY)}
    posts = list(fixture_posts(ONTOLOGY, 120, seed=3, prefix="demo"))
    assert len({p.post_id for p, _ in posts}) == 120
    for post, truth in posts:
        Post.model_validate_json(post.model_dump_json(by_alias=True))
        record = by_stem[post.post_id.rsplit("-", 1)[1]]
        assert base64.b64decode(post.image.b64) == Path(record.image).read_bytes()
        assert truth.categories == tuple(record.categories)
    assert [p.caption for p, _ in posts] == [p.caption for p, _ in fixture_posts(ONTOLOGY, 120, seed=3, prefix="demo")]
