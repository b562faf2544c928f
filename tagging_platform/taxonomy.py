"""Hierarchical tags: each ImageNet-1k class's WordNet hypernyms, the `parents` of a tag (like Rekognition's Parents).

ImageNet's classes are WordNet 3.0 noun synsets: class id `n02124075` is the noun at offset 02124075 of
WordNet's `data.noun`. Following its hypernyms ("is a kind of") upwards, "Egyptian cat" is a domestic cat,
a cat, a feline, a carnivore, a placental, a mammal, a vertebrate, a chordate, an animal.

Two files ship in `tagging_platform/data/`:
- `imagenet_wnids.txt`: the 1,000 class ids in output order (the order of torchvision's
  `MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]`, the ImageNet devkit's order), the input;
- `imagenet_parents.json`: per class its id, label, synset name and parents, generated from WordNet by
  `python -m tagging_platform.taxonomy` (Debian's `wordnet-base` database in /usr/share/wordnet).
At run time only the JSON is read: no WordNet installation, no nltk. A test regenerates it from the
Debian database and compares, so the file never drifts from the code that made it.

The cut: WordNet's hierarchy tops out in nodes that hold nearly everything ("entity", "physical entity",
"object", "whole", "living thing", "organism", ...) or that are WordNet's bookkeeping rather than words a
customer searches by ("instrumentality", "causal agent", "part", "substance", "matter"). Those in
`EXCLUDED` are left out of every list; the traversal still passes through them, so nothing below is lost.
Kept: everything more specific, down to the broad but meaningful "animal", "artifact", "food", "person",
"natural object", "geological formation".

Parents are ordered nearest first, and every parent comes before its own parents: sorted by the longest
chain of hypernyms from the class (a synset with several hypernyms, such as "domestic cat", which is both
a "cat" and a "domestic animal", contributes every chain), ties in the order WordNet lists the hypernyms.
Each parent is its synset's first lemma, underscores as spaces; a name that two synsets share appears
once (the nearer), and a parent named like the class's own label is left out.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
DATA = "data"
WNIDS_FILE = "imagenet_wnids.txt"
PARENTS_FILE = "imagenet_parents.json"

# WordNet 3.0 noun offsets left out of parents (see the module's docstring): too abstract to tag by.
EXCLUDED: dict[str, str] = {
    "00001740": "entity",
    "00001930": "physical entity",
    "00002137": "abstraction",
    "00002684": "object",
    "00003553": "whole",
    "00004258": "living thing",
    "00004475": "organism",
    "00007347": "causal agent",
    "00019613": "substance",  # "the real physical matter of which a thing consists"
    "00020090": "substance",  # "a particular kind or species of matter with uniform properties"
    "00020827": "matter",
    "00024264": "attribute",
    "00027167": "location",
    "00027807": "shape",
    "00031921": "relation",
    "00033020": "communication",
    "03575240": "instrumentality",
    "03892891": "part",  # of an artifact
    "08620061": "point",
    "13809207": "part",  # a relation
    "14778436": "agent",
    "15046900": "solid",
}


@dataclass(frozen=True)
class Synset:
    offset: str
    lemmas: tuple[str, ...]
    hypernyms: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.lemmas[0].replace("_", " ")


def read_nouns(wordnet_dir: Path | str = WORDNET_DIR) -> dict[str, Synset]:
    """Every noun synset of WordNet's `data.noun` by its 8-digit offset, with its (instance) hypernyms.

    A line is `offset lex_filenum ss_type w_cnt (word lex_id){w_cnt} p_cnt (symbol offset pos source/target){p_cnt}
    | gloss`, w_cnt in hexadecimal; lines starting with two spaces are the licence.
    """
    path = Path(wordnet_dir) / "data.noun"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install Debian's wordnet-base (apt-get install wordnet-base)")
    nouns: dict[str, Synset] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  "):
                continue
            fields = line.split(" | ", 1)[0].split()
            words = int(fields[3], 16)
            lemmas = tuple(fields[4 : 4 + 2 * words : 2])
            at = 4 + 2 * words
            pointers = fields[at + 1 : at + 1 + 4 * int(fields[at])]
            hypernyms = tuple(
                pointers[i + 1]
                for i in range(0, len(pointers), 4)
                if pointers[i] in ("@", "@i") and pointers[i + 2] == "n"
            )
            nouns[fields[0]] = Synset(fields[0], lemmas, hypernyms)
    return nouns


def hypernym_names(nouns: dict[str, Synset], offset: str, own_label: str = "") -> list[str]:
    """The synset's ancestors' names, nearest first, every one before its own ancestors, less EXCLUDED."""
    # Longest distance from the synset to each ancestor, and the order they are first met (depth first,
    # in WordNet's order of hypernyms): a topological order of the ancestors, nearest first.
    distance: dict[str, int] = {}
    first_seen: dict[str, int] = {}

    def visit(current: str, steps: int) -> None:
        for hypernym in nouns[current].hypernyms:
            first_seen.setdefault(hypernym, len(first_seen))
            if distance.get(hypernym, -1) < steps + 1:
                distance[hypernym] = steps + 1
                visit(hypernym, steps + 1)

    visit(offset, 0)
    names: list[str] = []
    for ancestor in sorted(distance, key=lambda a: (distance[a], first_seen[a])):
        name = nouns[ancestor].name
        if ancestor in EXCLUDED or name in names or name.lower() == own_label.lower():
            continue
        names.append(name)
    return names


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k class ids (`n` + WordNet noun offset) in the models' output order."""
    text = importlib.resources.files("tagging_platform").joinpath(DATA, WNIDS_FILE).read_text()
    return text.split()


def imagenet_labels() -> list[str]:
    """torchvision's names of the ImageNet-1k classes, in output order: the builtin models' labels."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def build_imagenet_parents(wordnet_dir: Path | str = WORDNET_DIR) -> dict:
    """The document `imagenet_parents.json` holds, computed from a WordNet 3.0 database."""
    nouns = read_nouns(wordnet_dir)
    wnids, labels = imagenet_wnids(), imagenet_labels()
    if len(wnids) != len(labels):
        raise ValueError(f"{len(wnids)} ImageNet class ids but {len(labels)} labels")
    classes = []
    for wnid, label in zip(wnids, labels, strict=True):
        synset = nouns.get(wnid.removeprefix("n"))
        if synset is None:
            raise ValueError(f"ImageNet class {wnid} ({label}) is not a noun synset of {wordnet_dir}")
        parents = hypernym_names(nouns, synset.offset, label)
        classes.append({"wnid": wnid, "label": label, "synset": synset.name, "parents": parents})
    return {
        "source": "WordNet 3.0 noun hypernyms (Debian wordnet-base) of the ImageNet-1k classes; "
        "generated by python -m tagging_platform.taxonomy",
        "excluded": sorted(set(EXCLUDED.values())),
        "classes": classes,
    }


def dumps(document: dict) -> str:
    """The JSON text as committed: one class per line, so a change to the cut reads as a diff."""
    lines = ",\n".join("  " + json.dumps(entry, ensure_ascii=False) for entry in document["classes"])
    head = {key: value for key, value in document.items() if key != "classes"}
    return json.dumps(head, ensure_ascii=False)[:-1] + ', "classes": [\n' + lines + "\n]}\n"


@functools.cache
def _packaged() -> dict:
    return json.loads(importlib.resources.files("tagging_platform").joinpath(DATA, PARENTS_FILE).read_text())


def parents_for(labels: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Parents aligned with `labels` when they are the ImageNet-1k classes in torchvision's order, else ().

    A model with other classes (a customer's TorchScript model) has no taxonomy: its tags have no parents.
    """
    classes = _packaged()["classes"]
    if list(labels) != [entry["label"] for entry in classes]:
        return ()
    return tuple(tuple(entry["parents"]) for entry in classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tagging_platform.taxonomy",
        description=f"Generate tagging_platform/{DATA}/{PARENTS_FILE} from a WordNet 3.0 database.",
    )
    parser.add_argument("--wordnet", default=str(WORDNET_DIR), help="the folder of data.noun (default %(default)s)")
    parser.add_argument("--output", help="where to write (default: the packaged file, in this source tree)")
    parser.add_argument("--check", action="store_true", help="compare with the packaged file; exit 1 if it differs")
    args = parser.parse_args(argv)
    text = dumps(build_imagenet_parents(args.wordnet))
    packaged = Path(__file__).with_name(DATA) / PARENTS_FILE
    if args.check:
        same = packaged.exists() and packaged.read_text(encoding="utf-8") == text
        print(f"{packaged}: {'up to date' if same else 'differs from what WordNet gives'}")
        return 0 if same else 1
    output = Path(args.output) if args.output else packaged
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}: {len(json.loads(text)['classes'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
