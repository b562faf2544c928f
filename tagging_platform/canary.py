"""The canary: known photographs with expected tags, tagged like a customer's batch, and the verdict on its output.

A canary is a batch like any other: its photographs go to the image bucket, its manifest is validated by
the `manifest` asset, its chunks are tagged and its tags published to the default output location. Only
the last step is its own: the published objects (what a customer reads) are compared with expectations
a person wrote after looking at each photograph (`data/canary.json`), so a regression anywhere on the way
(weights, labels, preprocessing, decoding, publishing) shows as a drifted prediction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from tagging_platform import photos, taxonomy
from tagging_platform.s3 import list_objects, split_uri

# The canary's batch (dynamic partition). '@' never survives `partition_key_for`, so no customer's
# manifest can ever be taken for the canary, nor the canary for a customer's batch.
PARTITION = "canary@platform"
# In the warehouse bucket, where neither manifest sensor looks: canary runs come from the schedule alone.
MANIFEST_KEY = "canary/manifest.json"
EXPECTATIONS_FILE = "canary.json"


class CanaryError(ValueError):
    """An expectations file the canary cannot use; the message names the entry."""


@dataclass(frozen=True)
class Expectation:
    """One photograph and what must be among its first `within_top` tags: a named class or a class under a parent."""

    photograph: str
    shows: str
    within_top: int
    any_tag: tuple[str, ...]
    any_parent: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.photograph}.jpg"

    def describe(self) -> str:
        wanted = [*(repr(t) for t in self.any_tag), *(f"a kind of {p!r}" for p in self.any_parent)]
        return f"{' or '.join(wanted)} in the top {self.within_top}"

    def met_by(self, tags: list[dict[str, Any]]) -> bool:
        return any(
            tag["name"] in self.any_tag or set(self.any_parent) & set(tag.get("parents") or ())
            for tag in tags[: self.within_top]
        )


@dataclass(frozen=True)
class Verdict:
    """One canary image's outcome, with what was expected and what the platform published."""

    image: str
    photograph: str
    expected: str
    actual: list[tuple[str, float]]
    status: str
    error: str | None
    passed: bool

    def describe(self) -> str:
        got = (
            ", ".join(f"{name} {confidence:.2f}" for name, confidence in self.actual) or f"{self.status}: {self.error}"
        )
        return f"{self.photograph} ({self.image}): expected {self.expected}, got {got}"


def load_expectations(path: str = "") -> list[Expectation]:
    """The expectations at `path`, or those shipped with the platform when it is empty."""
    source = Path(path) if path else files("tagging_platform").joinpath("data", EXPECTATIONS_FILE)
    entries = json.loads(source.read_text())["photographs"]
    labels = taxonomy.imagenet_labels()
    classes, parents = set(labels), {p for ps in taxonomy.parents_for(labels) for p in ps}
    expectations = []
    for index, entry in enumerate(entries):
        where = f"{source}: photograph {index}"
        if entry["photograph"] not in photos.PHOTOGRAPHS:
            raise CanaryError(f"{where}: {entry['photograph']!r} is not one of {sorted(photos.PHOTOGRAPHS)}")
        # A misspelt class or parent would never match and fail the canary for a reason no model can fix.
        unknown = [t for t in entry["any_tag"] if t not in classes] + [
            p for p in entry["any_parent"] if p not in parents
        ]
        if unknown:
            raise CanaryError(f"{where}: {unknown[0]!r} is neither an ImageNet class nor a parent of one")
        if not (entry["any_tag"] or entry["any_parent"]) or entry["within_top"] < 1:
            raise CanaryError(f"{where}: needs within_top >= 1 and at least one of any_tag, any_parent")
        expectations.append(
            Expectation(
                entry["photograph"],
                entry["shows"],
                int(entry["within_top"]),
                tuple(entry["any_tag"]),
                tuple(entry["any_parent"]),
            )
        )
    return expectations


def photographs(expectations: list[Expectation]) -> dict[str, bytes]:
    """The canary's images as JPEGs, by file name; the same bytes (and so the same ETags) every time."""
    return {e.filename: photos.jpeg(photos.photograph(e.photograph)) for e in expectations}


def manifest(image_uris: list[str], label: str) -> dict[str, Any]:
    """A native manifest of the canary's images.

    `label` (the scheduled time) gives every canary a manifest of its own, so it never finds an earlier
    canary's chunk results; `reuse: false` makes the model look at the photographs again instead of
    reusing the tags it gave them last time: a canary that reused its tags would test nothing.
    """
    return {"images": image_uris, "id": f"canary-{label}", "reuse": False}


def published_objects(s3_client, marker: dict[str, Any]) -> list[dict[str, Any]]:
    """The tag objects a completion marker vouches for, read as a customer reads them."""
    bucket, prefix = split_uri(marker["location"])
    if marker["format"] == "jsonl":
        bodies = [s3_client.get_object(Bucket=bucket, Key=part["key"])["Body"].read() for part in marker["parts"]]
        return [json.loads(line) for body in bodies for line in body.splitlines() if line]
    return [
        json.loads(s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        for item in list_objects(s3_client, bucket, prefix + "objects/")
    ]


def judge(objects: list[dict[str, Any]], expectations: list[Expectation]) -> list[Verdict]:
    """One verdict per expectation; a photograph missing from the output fails too."""
    by_file = {obj["image"].rsplit("/", 1)[-1]: obj for obj in objects}
    verdicts = []
    for expectation in expectations:
        obj = by_file.get(expectation.filename)
        if obj is None:
            verdicts.append(
                Verdict(
                    "",
                    expectation.photograph,
                    expectation.describe(),
                    [],
                    "missing",
                    "not in the published output",
                    False,
                )
            )
            continue
        tags = obj.get("tags") or []
        verdicts.append(
            Verdict(
                image=obj["image"],
                photograph=expectation.photograph,
                expected=expectation.describe(),
                actual=[(t["name"], round(t["confidence"], 4)) for t in tags],
                status=obj["status"],
                error=obj.get("error"),
                passed=obj["status"] == "ok" and expectation.met_by(tags),
            )
        )
    return verdicts


def verdicts_markdown(verdicts: list[Verdict]) -> str:
    rows = "\n".join(
        f"| {v.photograph} | {'pass' if v.passed else '**FAIL**'} | {v.expected} | "
        f"{', '.join(f'{n} {c:.2f}' for n, c in v.actual) or v.error} |"
        for v in verdicts
    )
    return f"| photograph | result | expected | published tags |\n|---|---|---|---|\n{rows}"
