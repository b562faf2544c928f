"""Hierarchical tags: ImageNet classes to their WordNet parents, as shipped and as regenerated from Debian's WordNet."""

import json
from pathlib import Path

import pytest

from tagging_platform import models, taxonomy
from tests.conftest import apt_install


@pytest.fixture(scope="module")
def labels() -> list[str]:
    return taxonomy.imagenet_labels()


@pytest.fixture(scope="module")
def parents(labels) -> dict[str, tuple[str, ...]]:
    return dict(zip(labels, taxonomy.parents_for(labels), strict=True))


@pytest.fixture(scope="module")
def wordnet() -> Path:
    """Debian's WordNet 3.0 database, installed on a machine that lacks it."""
    if not (taxonomy.WORDNET_DIR / "data.noun").exists():
        apt_install("wordnet-base")
    return taxonomy.WORDNET_DIR


def test_an_egyptian_cat_is_also_a_cat_a_feline_and_an_animal(parents):
    cat = parents["Egyptian cat"]
    assert {"cat", "feline", "carnivore", "mammal", "animal"} <= set(cat)
    # Nearest first: every parent before its own parents.
    order = [cat.index(name) for name in ("domestic cat", "cat", "feline", "mammal", "animal")]
    assert order == sorted(order)
    assert "coffee" in parents["espresso"] and "beverage" in parents["espresso"]
    assert "person" in parents["scuba diver"]


def test_the_crane_bird_and_the_crane_machine_are_told_apart(parents):
    bird, machine = parents["crane bird"], parents["crane"]
    assert {"wading bird", "bird", "animal"} <= set(bird) and not {"device", "artifact"} & set(bird)
    assert {"lifting device", "device", "artifact"} <= set(machine) and not {"bird", "animal"} & set(machine)


def test_every_class_has_a_synset_and_parents_without_the_top_of_wordnet(labels):
    wnids = taxonomy.imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000
    assert wnids[labels.index("Egyptian cat")] == "n02124075"
    document = json.loads((Path(taxonomy.__file__).parent / "data" / taxonomy.PARENTS_FILE).read_text())
    classes = document["classes"]
    assert [c["wnid"] for c in classes] == wnids and [c["label"] for c in classes] == labels
    excluded = set(taxonomy.EXCLUDED.values())
    for entry in classes:
        assert entry["synset"] and entry["parents"], entry
        assert len(entry["parents"]) == len(set(entry["parents"])), entry
        assert not excluded & set(entry["parents"]), entry
        assert entry["label"] not in entry["parents"], entry
    # The class ids are in torchvision's order: the synsets' names are torchvision's labels but for the two
    # that torchvision renamed to tell them apart from another class.
    renamed = {c["label"]: c["synset"] for c in classes if c["synset"].lower() != c["label"].lower()}
    assert renamed == {"crane bird": "crane", "maillot tank suit": "maillot"}


def test_a_model_with_other_classes_has_no_parents(labels):
    assert taxonomy.parents_for(["hotdog", "not hotdog"]) == ()
    assert taxonomy.parents_for(labels[::-1]) == ()


def test_the_shipped_file_is_what_wordnet_gives(wordnet):
    """The runtime reads the committed JSON; it must be exactly what the generator makes from Debian's WordNet."""
    shipped = (Path(taxonomy.__file__).parent / "data" / taxonomy.PARENTS_FILE).read_text(encoding="utf-8")
    assert taxonomy.dumps(taxonomy.build_imagenet_parents(wordnet)) == shipped, (
        "regenerate it: python -m tagging_platform.taxonomy"
    )
    assert taxonomy.main(["--check", "--wordnet", str(wordnet)]) == 0


def test_the_hierarchy_is_read_from_the_wordnet_format(tmp_path):
    """A database in WordNet's format: hypernyms (@) and instance hypernyms (@i), several per synset, the cut."""
    lines = [
        "  1 This software and database is being provided to you, the LICENSEE, by Princeton University",
        "00001740 03 n 01 entity 0 000 | that which is perceived",
        "00000010 03 n 01 animal 0 001 @ 00001740 n 0000 | a living organism",
        "00000020 05 n 02 domestic_animal 0 pet 0 001 @ 00000010 n 0000 | kept by people",
        "00000030 05 n 01 mammal 0 001 @ 00000010 n 0000 | furry",
        "00000040 05 n 02 cat 0 true_cat 0 001 @ 00000030 n 0000 | feline mammal",
        "00000050 05 n 02 house_cat 0 pussy 0 003 @ 00000040 n 0000 @ 00000020 n 0000 ~ 00000060 n 0000 | a cat",
        "00000060 05 n 01 Garfield 0 001 @i 00000050 n 0000 | a famous one",
    ]
    (tmp_path / "data.noun").write_text("\n".join(lines) + "\n")
    nouns = taxonomy.read_nouns(tmp_path)
    assert nouns["00000050"].lemmas == ("house_cat", "pussy") and nouns["00000050"].name == "house cat"
    assert nouns["00000050"].hypernyms == ("00000040", "00000020")
    # "animal" is two steps up through "domestic animal" but three through "cat": it comes after "mammal".
    assert taxonomy.hypernym_names(nouns, "00000060") == ["house cat", "cat", "domestic animal", "mammal", "animal"]
    named_cat = taxonomy.hypernym_names(nouns, "00000060", own_label="Cat")
    assert named_cat == ["house cat", "domestic animal", "mammal", "animal"]


def test_builtin_imagenet_models_carry_parents_and_they_are_part_of_the_version():
    card, _ = models.builtin_model()
    assert len(card.parents) == len(card.labels)
    assert "feline" in card.parents[card.labels.index("Egyptian cat")]
    stored = json.loads(json.dumps(card.as_dict()))
    assert models.ModelCard.from_dict(stored, list(card.labels)) == card
    plain = models.ModelCard(**{**card.__dict__, "parents": ()})
    assert plain.version != card.version  # parents change the published tags
    # A card written before parents existed (no "parents" key) still loads, with the version it always had.
    old = {key: value for key, value in plain.as_dict().items() if key != "parents"}
    assert models.ModelCard.from_dict(old, list(card.labels)).parents == ()
    with pytest.raises(models.ModelError, match="lists of parents"):
        models.ModelCard(**{**card.__dict__, "parents": card.parents[:10]})
