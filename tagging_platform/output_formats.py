"""The published record of one image in the shapes other tools read: Rekognition's DetectLabels, Ground Truth's manifest.

`rekognition`: each line is a DetectLabels response (`Labels`, `LabelModelVersion`) for the image,
with the platform's lineage under its own key, `TaggingPlatform`. `groundtruth`: each line is a
line of a Ground Truth multi-label image-classification output manifest. The platform's own tag
object (`tags.tag_object`) stays the `jsonl` and `objects` formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tagging_platform import tags

LINEAGE_KEY = "TaggingPlatform"
# DetectLabels returns only labels at or above this confidence (in percent) when MinConfidence is not given.
DETECT_LABELS_MIN_CONFIDENCE = 55.0
GROUND_TRUTH_ATTRIBUTE = "labels"
GROUND_TRUTH_TYPE = "groundtruth/image-classification-multilabel"


@dataclass(frozen=True)
class Options:
    """What a batch asked of its published records; None: the format's own default."""

    max_labels: int | None = None
    min_confidence: float | None = None
    job_name: str = ""
    creation_date: str = ""


def lineage(row: dict[str, Any]) -> dict[str, Any]:
    """Where a record's tags came from: the platform's tag object without its tags."""
    obj = tags.tag_object(row)
    obj.pop("tags", None)
    return obj


def rekognition_record(row: dict[str, Any], options: Options) -> dict[str, Any]:
    """A DetectLabels response: every parent also a label, at the highest confidence of the labels under it.

    Confidences are percentages. MinConfidence drops labels below it (55 when not given, as
    DetectLabels does) and MaxLabels keeps the most confident ones. A parent label has no Parents of
    its own: the taxonomy ships as each class's chain of parents, which does not say which of them
    are above which other parent when a class has several hypernyms.
    """
    labels: dict[str, dict[str, Any]] = {}
    for tag in _tags(row):
        confidence = round(tag["confidence"] * 100, 3)
        parents = list(tag["parents"] or [])
        _merge(labels, tag["name"], confidence, parents)
        for parent in parents:
            _merge(labels, parent, confidence, [])
    floor = DETECT_LABELS_MIN_CONFIDENCE if options.min_confidence is None else options.min_confidence
    kept = sorted((label for label in labels.values() if label["Confidence"] >= floor), key=lambda l: -l["Confidence"])
    if options.max_labels is not None:
        kept = kept[: options.max_labels]
    return {
        "Labels": kept,
        "LabelModelVersion": f"{row['model_name']}@{row['model_version']}",
        LINEAGE_KEY: lineage(row),
    }


def _tags(row: dict[str, Any]) -> list[dict[str, Any]]:
    return (row["tags"] or []) if row["status"] == tags.STATUS_OK else []


def _merge(labels: dict[str, dict[str, Any]], name: str, confidence: float, parents: list[str]) -> None:
    label = labels.get(name)
    if label is None:
        labels[name] = {
            "Name": name,
            "Confidence": confidence,
            "Instances": [],
            "Parents": [{"Name": p} for p in parents],
            "Aliases": [],
            "Categories": [],
        }
        return
    label["Confidence"] = max(label["Confidence"], confidence)
    if parents and not label["Parents"]:
        # A class that is also another class's parent: it keeps its own chain.
        label["Parents"] = [{"Name": p} for p in parents]


def class_ids(tag_column: pa.ChunkedArray) -> dict[str, int]:
    """One class id per tag name across the batch (sorted by name), as a labeling job's class list gives."""
    names = pc.unique(pc.struct_field(pc.list_flatten(tag_column), "name")).to_pylist()
    return {name: index for index, name in enumerate(sorted(names))}


def groundtruth_record(row: dict[str, Any], ids: dict[str, int], options: Options) -> dict[str, Any]:
    """A line of a Ground Truth multi-label image-classification output manifest, machine-annotated."""
    found = _tags(row)
    metadata: dict[str, Any] = {
        "class-map": {str(ids[t["name"]]): t["name"] for t in found},
        "confidence-map": {str(ids[t["name"]]): round(t["confidence"], 4) for t in found},
        "type": GROUND_TRUTH_TYPE,
        "human-annotated": "no",
        "creation-date": options.creation_date,
        "job-name": options.job_name,
    }
    if row["status"] != tags.STATUS_OK:
        metadata["failure-reason"] = row["error"]
    return {
        "source-ref": row["image"],
        GROUND_TRUTH_ATTRIBUTE: [ids[t["name"]] for t in found],
        f"{GROUND_TRUTH_ATTRIBUTE}-metadata": metadata,
        "tagging-platform": lineage(row),
    }
