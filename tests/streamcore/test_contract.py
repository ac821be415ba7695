"""The JSON Schema files under ``schemas/``: equal to what the models generate, valid JSON Schema, agreeing with
the models on the examples and on the image-source rule, and open to growth where readers need it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from streamcore import contract
from streamcore.schemas import Feedback, LabelView, ModelUpdate, utcnow

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.json"))
INVALID = sorted((SCHEMAS / "examples" / "invalid").glob("*.json"))
MODELS = {contract.file_name(m): m for m in (*contract.INBOUND, *contract.OUTBOUND)}


def _validator(example: Path) -> tuple[Draft202012Validator, type[BaseModel]]:
    """The schema and model of an example named ``<record>.v<N>[.<variant>].json``."""
    file = ".".join(example.name.split(".")[:2]) + ".json"
    return Draft202012Validator(json.loads((SCHEMAS / file).read_text())), MODELS[file]


def test_schema_files_equal_what_the_models_generate() -> None:
    assert contract.stale(SCHEMAS) == [], "run: python -m streamcore.contract"
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(MODELS)


def test_check_reports_a_stale_file(tmp_path) -> None:
    contract.write(tmp_path)
    assert contract.main([str(tmp_path), "--check"]) == 0
    (tmp_path / "label.v1.json").write_text("{}")
    assert contract.main([str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_file_is_a_versioned_draft_2020_12_schema(name) -> None:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    version = name.removesuffix(".json").replace(".", "/", 1)
    assert schema["title"] == version and schema["properties"]["schema"]["const"] == version


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_for_schema_and_model(example) -> None:
    validator, model = _validator(example)
    validator.validate(json.loads(example.read_text()))
    model.model_validate_json(example.read_bytes())


@pytest.mark.parametrize("example", INVALID, ids=lambda p: p.name)
def test_invalid_examples_are_refused_by_schema_and_model(example) -> None:
    validator, model = _validator(example)
    assert not validator.is_valid(json.loads(example.read_text()))
    with pytest.raises(ValidationError):
        model.model_validate_json(example.read_bytes())


@pytest.mark.parametrize("kinds", list(itertools.product(("absent", "null", "string"), repeat=3)), ids="-".join)
def test_the_image_source_rule_of_the_schema_is_the_models(kinds) -> None:
    image = {name: None if kind == "null" else "aGk=" for name, kind in zip(("b64", "url", "path"), kinds)
             if kind != "absent"}
    if image.get("url"):
        image["url"] = "https://cdn.example/a.jpg"
    post = json.loads((SCHEMAS / "examples" / "post.v1.path.json").read_text()) | {"image": image}
    validator, model = _validator(SCHEMAS / "examples" / "post.v1.path.json")
    try:
        model.model_validate(post)
        model_ok = True
    except ValidationError:
        model_ok = False
    assert validator.is_valid(post) == model_ok
    assert model_ok == (kinds.count("string") == 1)


def test_a_label_with_new_fields_and_a_new_head_is_valid_for_readers() -> None:
    label = json.loads((SCHEMAS / "examples" / "label.v1.json").read_text())
    grown = label | {"head": "mixture_of_experts", "explanations": [{"region": [0, 0, 10, 10]}],
                     "hints_used": label["hints_used"] | {"source": "retrieved", "weight": 0.4}}
    validator, _ = _validator(SCHEMAS / "examples" / "label.v1.json")
    validator.validate(grown)
    read = LabelView.model_validate(grown)
    assert read.head == "mixture_of_experts" and read.model_extra == {"explanations": [{"region": [0, 0, 10, 10]}]}


def test_records_written_before_the_version_field_still_read_and_new_ones_carry_it() -> None:
    old = {"post_id": "p1", "categories": ["dresses"]}
    assert Feedback.model_validate(old).schema_ == "feedback/v1"
    assert _validator(SCHEMAS / "examples" / "feedback.v1.json")[0].is_valid(old)


def test_a_correction_naming_no_category_says_the_photo_shows_no_garment_and_names_nothing_else() -> None:
    none = {"post_id": "p1", "categories": []}
    assert Feedback.model_validate(none).no_garment and not Feedback.model_validate({**none, "categories": ["bags"]}).no_garment
    assert _validator(SCHEMAS / "examples" / "feedback.v1.json")[0].is_valid(none)
    with pytest.raises(ValidationError, match="no garment"):
        Feedback.model_validate({**none, "attributes": ["leather"]})
    with pytest.raises(ValidationError):
        Feedback.model_validate({"post_id": "p1"})  # saying nothing is not saying "no garment"
    update = ModelUpdate(version="v2", path="models/v2", promoted_at=utcnow())
    assert json.loads(update.model_dump_json(by_alias=True))["schema"] == "model-update/v1"
