"""The curated ontology: 13 categories, consistent index spaces, refusal of undefined attributes."""

import json

import pytest

from serving.ontology import load_ontology
from serving.ontology.model import DATA_DIR


def test_index_spaces_are_consistent():
    o = load_ontology()
    assert len(o.categories) == 13 and len(set(o.category_names)) == 13
    assert len(set(o.subcategory_names)) == len(o.subcategory_names)
    assert o.attribute_names == [t.name for t in o.materials] + [t.name for t in o.patterns]
    assert [o.category_ids[n] for n in o.category_names] == list(range(13))
    for k, category in enumerate(o.categories):
        assert [o.attribute_names[i] for i in o.attribute_ranges[k]] == sorted(
            (*category.materials, *category.patterns), key=o.attribute_ids.__getitem__)
        assert {o.subcategory_names[j] for j in o.subcategory_ranges[k]} == {s.name for s in category.subcategories}
        assert all(o.subcategory_parent[j] == k for j in o.subcategory_ranges[k])
    assert o.brands and o.colours and o.styles and o.version.endswith(o.checksum[:8])


def test_unknown_category_names_the_known_ones():
    with pytest.raises(KeyError, match="dresses"):
        load_ontology().category_index("gowns")


def test_a_category_naming_an_undefined_attribute_is_refused(tmp_path):
    data = json.loads((DATA_DIR / "hierarchy.json").read_text())
    data["categories"][0]["patterns"].append("tartanish")
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tartanish"):
        load_ontology(path)
