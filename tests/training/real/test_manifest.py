"""Manifests: JSONL and folder forms, refusals with line numbers, stable splits, whole writes, the committed
fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.ontology import load_ontology
from training.real.fixture import FIXTURE_DIR, fixture_records
from training.real.manifest import ManifestError, Record, read_manifest, write_manifest

ONTOLOGY = load_ontology()


def _write(tmp_path: Path, *lines: dict | str) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_reads_records_and_adds_the_parent_category(tmp_path):
    path = _write(tmp_path, {"image": "a.jpg", "subcategories": ["sneaker"]},
                  {"image": "https://example.com/b.jpg", "categories": [], "caption": "the street"}, "")
    first, second = read_manifest(path, ONTOLOGY)
    assert first.categories == ["shoes"] and first.image == str((tmp_path / "a.jpg").resolve())
    assert second.categories == [] and second.image == "https://example.com/b.jpg"


@pytest.mark.parametrize(("line", "reason"), [
    ('{"image": "a.jpg", "categories": ["capes"]}', "unknown category"),
    ('{"image": "a.jpg"}', "needs categories"),
    ('{"image": "a.jpg", "categories": [], "box": [10, 0, 5, 5]}', "box"),
    ("{not json", "Expecting property name"),
    ('{"image": "a\\u0000.jpg", "categories": []}', "NUL"),
    ('{"image": "x/3", "categories": [], "source": "synthetic_negative"}', "reserved"),
])
def test_a_bad_line_is_refused_with_its_number(tmp_path, line, reason):
    path = _write(tmp_path, {"image": "ok.jpg", "categories": ["bags"]}, line)
    with pytest.raises(ManifestError, match=r"m\.jsonl:2") as caught:
        read_manifest(path, ONTOLOGY)
    assert reason in str(caught.value)


def test_a_folder_per_category_reads_as_a_manifest(tmp_path):
    for folder, name in (("shoes", "x.jpg"), ("no_garment", "y.png"), ("shoes", "notes.txt"), ("shoes", "._x.jpg"),
                         (".ipynb_checkpoints", "z.jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"")
    records = read_manifest(tmp_path, ONTOLOGY)
    assert sorted((Path(r.image).name, tuple(r.categories)) for r in records) == [("x.jpg", ("shoes",)), ("y.png", ())]
    (tmp_path / "hats").mkdir()
    with pytest.raises(ManifestError, match="not a category"):
        read_manifest(tmp_path, ONTOLOGY)


def test_splits_are_stable_and_roughly_proportional():
    records = [Record(image=f"img{i}.jpg", categories=["bags"]) for i in range(3000)]
    splits = [r.split_of() for r in records]
    assert splits == [r.split_of() for r in records]
    assert 0.1 < splits.count("test") / 3000 < 0.2 and 0.1 < splits.count("val") / 3000 < 0.2
    assert Record(image="a.jpg", categories=[], split="train").split_of() == "train"


def test_write_then_read_round_trips(tmp_path):
    records = [Record(image="a.jpg", categories=["shoes"], subcategories=["sneaker"], source="co_parsing", split="val"),
               Record(image="b.jpg", categories=[], box=(0, 0, 10, 20))]
    write_manifest(records, tmp_path / "out.jsonl")
    back = read_manifest(tmp_path / "out.jsonl", ONTOLOGY)
    assert [(r.categories, r.subcategories, r.box, r.split, r.source) for r in back] == \
        [(r.categories, r.subcategories, r.box, r.split, r.source) for r in records]


def test_the_fixture_is_small_real_and_covers_the_dataset_categories():
    records = fixture_records(ONTOLOGY)
    size = sum(p.stat().st_size for p in (FIXTURE_DIR / "images").iterdir())
    assert 90 <= len(records) <= 120 and size <= 3 * 2**20
    assert all(Path(r.image).is_file() and r.split == "test" for r in records)
    # Held out by the dataset's own split, so no model trained on the dataset has seen them.
    assert all(r.model_copy(update={"split": None}).split_of() == "test" for r in records)
    assert len({c for r in records for c in r.categories}) >= 8
    assert (FIXTURE_DIR / "ATTRIBUTION.md").read_text().count("CC0") >= 1


def test_a_photo_keeps_its_split_wherever_the_dataset_lives():
    here, there = Record(image="images/abc.jpg", categories=[]), Record(image="/data/x/images/abc.jpg", categories=[])
    assert here.split_of() == there.split_of()


def test_every_region_of_a_photo_shares_the_whole_photos_split():
    for i in range(200):
        whole = Record(image=f"street/{i}.jpg", categories=["bags"])
        regions = [Record(image=f"street/{i}.jpg", categories=[], box=(x, 0, x + 50, 80)) for x in (0, 10, 90)]
        assert {r.split_of() for r in regions} == {whole.split_of()}


def test_a_write_that_fails_leaves_the_old_manifest_whole(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest([Record(image=f"{i}.jpg", categories=["bags"]) for i in range(3)], path)
    before = path.read_bytes()

    def interrupted():
        yield Record(image="new.jpg", categories=["shoes"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_manifest(interrupted(), path)
    with pytest.raises(ManifestError, match="no records"):
        write_manifest([], path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_a_manifest_is_not_written_over_a_folder_or_empty(tmp_path):
    with pytest.raises(ManifestError, match="is a folder"):
        write_manifest([Record(image="a.jpg", categories=[])], tmp_path)
    with pytest.raises(ManifestError, match="no records"):
        write_manifest([], tmp_path / "new.jsonl")
    assert not (tmp_path / "new.jsonl").exists()
