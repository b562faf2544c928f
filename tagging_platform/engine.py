"""The streaming tagging engine: concurrent fetch and decode feeding batched inference, bounded in memory."""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import io
import json
import resource
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as S3ConnectionError
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from tagging_platform import layout, models, reuse, tags, tuning
from tagging_platform.s3 import is_not_found, split_uri

# Pillow's own guard warns at 89M pixels and fails at twice that; we fail at the warning level, with a reason.
MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# How long the batch probe may time the model when a load finds no earlier choice for this kind of machine.
PROBE_S = 1.5


@dataclass(frozen=True)
class ChunkSpec:
    """One unit of work: a slice of a manifest, tagged by one step (one pod on Kubernetes)."""

    partition: str
    manifest: str
    manifest_etag: str
    index: int
    positions: tuple[int, ...]
    images: tuple[str, ...]
    model: models.ModelRef
    # Whether images this model version tagged before (same ETag) take those tags (the manifest's "reuse").
    reuse: bool = True

    @property
    def result_key(self) -> str:
        """Where the chunk's Parquet lands: derived from its content, so a retry finds the earlier result."""
        content = "\n".join((self.manifest_etag, *self.images))
        digest = hashlib.sha256(content.encode()).hexdigest()[:16]
        return layout.chunk_key(self.partition, self.model.name, self.model.short_version, self.index, digest)


@dataclass
class ChunkStats:
    images: int = 0
    tagged: int = 0  # images with tags, reused ones included
    errors: int = 0
    skipped: bool = False
    reused: int = 0  # of `tagged`, those whose tags came from the reuse index rather than the model
    device_decoded: int = 0  # images whose JPEG the tagger's device decoded (nvJPEG on CUDA), not Pillow
    lookup_s: float = 0.0
    model_load_s: float = 0.0
    fetch_s: float = 0.0
    decode_s: float = 0.0
    inference_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    # How the model ran: its precision, batch size and inputs' memory format, where the batch came from
    # (probe, cache, pinned) and the probe's images/s per batch size and format.
    precision: str = ""
    batch_size: int = 0
    memory_format: str = ""
    batch_source: str = ""
    probe_ips: str = ""
    # The step process's peak resident memory: bounded by queue and batch sizes, whatever the chunk size.
    peak_rss_mb: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}


@dataclass(frozen=True)
class _Decoded:
    position: int
    image: str
    etag: str | None
    pixels: Any = None  # a CHW uint8 tensor, resized and cropped, when the image decoded
    jpeg: bytes | None = None  # a plain JPEG left whole for the device's decoder, which takes a batch at once
    error: str | None = None
    fetch_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class Tagger:
    """A loaded model and how to run it: batched, top-k above a confidence threshold."""

    card: models.ModelCard
    ref: models.ModelRef
    network: Any
    device: str
    top_k: int = 5
    min_confidence: float = 0.05
    batch_size: int = 32
    fetch_workers: int = 4
    precision: str = tuning.FLOAT32
    memory_format: str = "channels_last"
    batch_choice: tuning.BatchChoice | None = None
    # Where torchvision decodes plain JPEGs, a batch at a time: "cuda" (nvJPEG) frees the CPU for fetching and
    # the rest; None leaves every image to Pillow's draft mode in the fetch threads, the fastest way on a CPU.
    jpeg_device: str | None = None
    load_s: float = 0.0
    _transform: Any = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        s3_client,
        ref: models.ModelRef,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 0,
        probe_s: float = PROBE_S,
        **options,
    ) -> Tagger:
        """Load a model version, run it at the fastest precision the gate allows, at the batch size measured best.

        `precision` "auto" takes the device's native lower precision when the gate passed it for this model
        version; a precision named outright must have passed too. `batch_size` 0 takes the probe's choice for
        this kind of machine (probing once, then reading it from the model bucket); any other value pins it.
        """
        import torch

        started = time.perf_counter()
        card = models.read_card(s3_client, ref)
        if device == "auto":
            # A model profiled for CPU stays there even in a GPU pod: its card says it is not worth a GPU.
            device = "cuda" if torch.cuda.is_available() and card.profile.accelerator == "gpu" else "cpu"
        network = models.load_network(card, models.load_artifact(s3_client, ref, card), device)
        chosen = _gated_precision(s3_client, ref, card, network, device, precision)
        network = _prepare_for_inference(network, card, device, chosen)
        choice = (
            tuning.BatchChoice(batch_size)
            if batch_size
            else _measured_batch(s3_client, ref, card, network, device, chosen, probe_s)
        )
        options.setdefault("jpeg_device", "cuda" if device == "cuda" else None)
        return cls(
            card, ref, network, device, batch_size=choice.batch_size, precision=chosen,
            memory_format=choice.memory_format, batch_choice=choice, load_s=time.perf_counter() - started, **options,
        )

    def decode(self, data: bytes):
        """Bytes of an image file to the model's input tensor, or an exception naming the problem."""
        return self.normalise(self.pixels(data))

    def pixels(self, data: bytes):
        """Bytes of an image file to its resized and cropped CHW uint8 pixels, or an exception naming the problem.

        Normalising waits for the batch: one vectorised pass over the whole batch in the inference thread instead
        of one small parallel region per image in the fetch threads, and a quarter of the bytes in flight.
        """
        prep = self.card.preprocessing
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(
                    f"image is {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS} pixels"
                )
            # JPEG draft mode decodes at a reduced scale that still covers the resize target: far less work.
            opened.draft("RGB", (prep.resize, prep.resize))
            image = ImageOps.exif_transpose(opened).convert("RGB")
        width, height = image.size
        if max(width, height) > 2 * min(width, height):
            # A sliver (2x40000 pixels, a few KB) would be resized to 256 by 5 million pixels, gigabytes. The
            # centre crop keeps only a centred square of the short side anyway, so cut to that square first.
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        return self.model_pixels(image)

    def model_pixels(self, image):
        """A decoded image (a PIL image, or a CHW uint8 tensor on any device) resized and cropped, as uint8."""
        import torch
        from torchvision.transforms.v2 import functional as F

        prep = self.card.preprocessing
        image = F.center_crop(F.resize(image, [prep.resize], antialias=True), [prep.crop])
        return image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)

    def normalise(self, pixels):
        """uint8 pixels (CHW or a NCHW batch) to the model's float32 input: scaled to 0-1 and normalised."""
        import torch
        from torchvision.transforms.v2 import functional as F

        prep = self.card.preprocessing
        return F.normalize(F.to_dtype(pixels, torch.float32, scale=True), list(prep.mean), list(prep.std))

    def _decode_on_device(self, batch: list[_Decoded]) -> tuple[list[_Decoded], int, float]:
        """The batch with its JPEGs decoded together on `jpeg_device`, how many the device decoded, and the time.

        torchvision decodes a list in one call, and one bad file fails the call: then each JPEG of the batch
        goes through Pillow like any other image, which tags it or names what is wrong with it.
        """
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        waiting = [d for d in batch if d.jpeg is not None]
        if not waiting:
            return batch, 0, 0.0
        started = time.perf_counter()
        try:
            images = decode_jpeg(
                [torch.frombuffer(bytearray(d.jpeg), dtype=torch.uint8) for d in waiting],
                mode=ImageReadMode.RGB,
                device=self.jpeg_device,
            )
            decoded = {
                id(d): dataclasses.replace(d, jpeg=None, pixels=self.model_pixels(image))
                for d, image in zip(waiting, images, strict=True)
            }
            on_device = len(waiting)
        except (RuntimeError, ValueError):
            decoded, on_device = {id(d): self._decode_with_pillow(d) for d in waiting}, 0
        return [decoded.get(id(d), d) for d in batch], on_device, time.perf_counter() - started

    def _decode_with_pillow(self, item: _Decoded) -> _Decoded:
        try:
            return dataclasses.replace(item, jpeg=None, pixels=self.pixels(item.jpeg))
        except Exception as exc:  # noqa: BLE001 - a bad image must never fail its chunk
            return dataclasses.replace(item, jpeg=None, error=_decode_error(exc))

    def predict(self, batch) -> list[tuple[list[dict[str, Any]], str, float]]:
        """(tags, top tag, top confidence) per input of a stacked NCHW batch: uint8 pixels or normalised inputs."""
        import torch

        with torch.inference_mode():
            inputs = batch.to(self.device, non_blocking=True)
            if inputs.dtype == torch.uint8:
                inputs = self.normalise(inputs)
            inputs = inputs.to(tuning.torch_dtype(self.precision))
            if self.memory_format == "channels_last":
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            probabilities = torch.softmax(self.network(inputs).float(), dim=1)
            confidences, classes = probabilities.topk(min(self.top_k, probabilities.shape[1]), dim=1)
        labels, parents = self.card.labels, self.card.parents
        results = []
        for row_conf, row_cls in zip(confidences.tolist(), classes.tolist(), strict=True):
            kept = [
                {"name": labels[c], "confidence": p, "parents": list(parents[c]) if parents else []}
                for p, c in zip(row_conf, row_cls, strict=True)
                if p >= self.min_confidence
            ]
            results.append((kept, labels[row_cls[0]], row_conf[0]))
        return results

    def tag(
        self,
        s3_client,
        spec: ChunkSpec,
        run_id: str,
        progress: Callable[[ChunkStats], None] | None = None,
        progress_every_s: float = 10.0,
    ) -> tuple[list[dict[str, Any]], ChunkStats]:
        """Tag every image of a chunk. Images that fail become error rows; nothing is dropped.

        Fetch and decode run in a thread pool ahead of inference, at most two batches in flight, so
        memory follows the batch size and never the chunk size. With a `jpeg_device`, the pool only fetches
        plain JPEGs and the device decodes each batch of them just before inference.
        """
        import torch

        choice = self.batch_choice or tuning.BatchChoice(self.batch_size, self.memory_format)
        stats = ChunkStats(
            images=len(spec.images), model_load_s=self.load_s, precision=self.precision, batch_size=self.batch_size,
            memory_format=self.memory_format, batch_source=choice.source, probe_ips=choice.rates_text(),
        )
        started = last_report = time.perf_counter()
        common = {
            "model_name": self.ref.name,
            "model_version": self.ref.version,
            "precision": self.precision,
            "manifest": spec.manifest,
            "partition": spec.partition,
            "chunk": spec.index,
            "run_id": run_id,
        }
        rows: list[dict[str, Any]] = []
        pending: list[_Decoded] = []

        def failed(decoded: _Decoded) -> None:
            stats.errors += 1
            rows.append(
                {
                    "image": decoded.image,
                    "position": decoded.position,
                    "etag": decoded.etag,
                    "status": tags.STATUS_ERROR,
                    "error": decoded.error,
                    "tags": None,
                    "top_tag": None,
                    "top_confidence": None,
                    "tagged_at": datetime.now(timezone.utc),
                    **common,
                }
            )

        def emit(batch: list[_Decoded]) -> None:
            batch, on_device, decode_s = self._decode_on_device(batch)
            stats.device_decoded += on_device
            stats.decode_s += decode_s
            for decoded in batch:
                if decoded.error is not None:
                    failed(decoded)
            batch = [d for d in batch if d.error is None]
            if not batch:
                return
            infer_started = time.perf_counter()
            predictions = self.predict(torch.stack([d.pixels.to(self.device, non_blocking=True) for d in batch]))
            stats.inference_s += time.perf_counter() - infer_started
            now = datetime.now(timezone.utc)
            for decoded, (kept, top, top_conf) in zip(batch, predictions, strict=True):
                rows.append(
                    {
                        "image": decoded.image,
                        "position": decoded.position,
                        "etag": decoded.etag,
                        "status": tags.STATUS_OK,
                        "error": None,
                        "tags": kept,
                        "top_tag": top,
                        "top_confidence": top_conf,
                        "tagged_at": now,
                        **common,
                    }
                )

        with ThreadPoolExecutor(self.fetch_workers, thread_name_prefix="fetch-decode") as pool:
            in_flight: collections.deque[Future[_Decoded]] = collections.deque()
            work = iter(zip(spec.positions, spec.images, strict=True))
            limit = 2 * self.batch_size
            while True:
                while len(in_flight) < limit:
                    item = next(work, None)
                    if item is None:
                        break
                    in_flight.append(pool.submit(self._fetch_and_decode, s3_client, *item))
                if not in_flight:
                    break
                decoded = in_flight.popleft().result()
                stats.fetch_s += decoded.fetch_s
                stats.decode_s += decoded.decode_s
                if decoded.error is not None:
                    failed(decoded)
                else:
                    pending.append(decoded)
                    if len(pending) == self.batch_size:
                        emit(pending)
                        pending = []
                if progress and time.perf_counter() - last_report >= progress_every_s:
                    last_report = time.perf_counter()
                    stats.wall_s = last_report - started
                    stats.tagged = len(rows) - stats.errors
                    progress(stats)
            if pending:
                emit(pending)
        stats.tagged = len(rows) - stats.errors
        stats.wall_s = time.perf_counter() - started
        return rows, stats

    def _fetch_and_decode(self, s3_client, position: int, image: str) -> _Decoded:
        started = time.perf_counter()
        try:
            bucket, key = split_uri(image)
            response = s3_client.get_object(Bucket=bucket, Key=key)
            if response["ContentLength"] > MAX_IMAGE_BYTES:
                response["Body"].close()
                return _Decoded(position, image, None, error=f"object is over {MAX_IMAGE_BYTES} bytes")
            data = response["Body"].read()
            etag = response["ETag"].strip('"')
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row with its reason
            if _transient(exc):
                # S3 away or throttled beyond botocore's retries says nothing about the image: an error row
                # would publish a good image as failed for good. Failing the chunk (nothing of it is written
                # yet) lets the step's retry policy tag it again once S3 is back.
                raise
            return _Decoded(position, image, None, error=_fetch_error(exc), fetch_s=time.perf_counter() - started)
        fetched = time.perf_counter()
        if self.jpeg_device and _plain_jpeg(data):
            return _Decoded(position, image, etag, jpeg=data, fetch_s=fetched - started)
        try:
            pixels = self.pixels(data)
        except Exception as exc:  # noqa: BLE001 - a bad image must never fail its chunk
            return _Decoded(
                position, image, etag, error=_decode_error(exc), fetch_s=fetched - started,
                decode_s=time.perf_counter() - fetched,
            )
        return _Decoded(position, image, etag, pixels, fetch_s=fetched - started, decode_s=time.perf_counter() - fetched)


def run_chunk(
    s3_client,
    warehouse_bucket: str,
    spec: ChunkSpec,
    run_id: str,
    load_tagger: Callable[[], Tagger],
    progress: Callable[[ChunkStats], None] | None = None,
) -> ChunkStats:
    """Tag a chunk and store its rows as one Parquet object, unless an earlier attempt already did.

    A single PUT is atomic in S3: readers see the whole chunk or nothing, so a retried or repeated
    chunk either finds a complete result and skips, or writes it again from scratch.
    """
    existing = _head(s3_client, warehouse_bucket, spec.result_key)
    if existing is not None:
        counts = json.loads(existing["Metadata"].get("stats", "{}"))
        return ChunkStats(
            images=counts.get("images", len(spec.images)),
            tagged=counts.get("tagged", 0),
            errors=counts.get("errors", 0),
            reused=counts.get("reused", 0),
            skipped=True,
        )
    started = time.perf_counter()
    reused_rows = _reused_rows(s3_client, warehouse_bucket, spec, run_id) if spec.reuse else []
    lookup_s = time.perf_counter() - started
    done = {row["position"] for row in reused_rows}
    rest = [(p, i) for p, i in zip(spec.positions, spec.images, strict=True) if p not in done]
    if rest:
        # Only the images not seen before go through the model; a chunk with none never loads it.
        remaining = dataclasses.replace(spec, positions=tuple(p for p, _ in rest), images=tuple(i for _, i in rest))
        rows, stats = load_tagger().tag(s3_client, remaining, run_id, progress)
    else:
        rows, stats = [], ChunkStats()
    stats.images, stats.reused, stats.lookup_s = len(spec.images), len(reused_rows), lookup_s
    stats.tagged += len(reused_rows)
    write_started = time.perf_counter()
    body = tags.to_parquet_bytes(tags.tag_table(rows + reused_rows))
    stats.write_s = time.perf_counter() - write_started
    stats.wall_s = time.perf_counter() - started
    stats.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    s3_client.put_object(
        Bucket=warehouse_bucket, Key=spec.result_key, Body=body, Metadata={"stats": json.dumps(stats.as_dict())}
    )
    return stats


def _reused_rows(s3_client, warehouse_bucket: str, spec: ChunkSpec, run_id: str) -> list[dict[str, Any]]:
    """Rows for the chunk's images that this model version already tagged, found by ETag in the reuse index.

    The images' current ETags (a listing of their folder, or a HEAD each), then one index lookup for the whole
    chunk. An image whose ETag cannot be read is left to the tagger, which reports why it cannot be read.
    """
    etags = reuse.current_etags(s3_client, list(spec.images))
    found = reuse.lookup(s3_client, warehouse_bucket, spec.model, (e for e in etags if e))
    rows = []
    for position, image, etag in zip(spec.positions, spec.images, etags, strict=True):
        hit = found.get(etag) if etag else None
        if hit is None:
            continue
        rows.append(
            {
                "image": image,
                "position": position,
                "etag": etag,
                "status": tags.STATUS_OK,
                "error": None,
                "tags": hit["tags"],
                "top_tag": hit["top_tag"],
                "top_confidence": hit["top_confidence"],
                "model_name": spec.model.name,
                "model_version": spec.model.version,
                "manifest": spec.manifest,
                "partition": spec.partition,
                "chunk": spec.index,
                "run_id": run_id,
                # When the tags were made, and by which run: this row only carries them into this batch.
                "tagged_at": hit["tagged_at"],
                "reused_from": hit["origin"],
            }
        )
    return rows


def chunk_stats(s3_client, warehouse_bucket: str, spec: ChunkSpec) -> dict[str, Any]:
    """The figures of the attempt that wrote the chunk's result (stored with it)."""
    head = _head(s3_client, warehouse_bucket, spec.result_key)
    return json.loads(head["Metadata"].get("stats", "{}")) if head else {}


def read_chunk(s3_client, warehouse_bucket: str, spec: ChunkSpec):
    body = s3_client.get_object(Bucket=warehouse_bucket, Key=spec.result_key)["Body"].read()
    # A result written before the schema gained columns still merges with the newer ones.
    return tags.conform(tags.from_parquet_bytes(body))


def chunk_specs(
    partition: str,
    manifest: str,
    manifest_etag: str,
    positions: Sequence[int],
    images: Sequence[str],
    model: models.ModelRef,
    chunk_images: int,
    reuse_tags: bool = True,
) -> list[ChunkSpec]:
    return [
        ChunkSpec(
            partition=partition,
            manifest=manifest,
            manifest_etag=manifest_etag,
            index=index,
            positions=tuple(positions[start : start + chunk_images]),
            images=tuple(images[start : start + chunk_images]),
            model=model,
            reuse=reuse_tags,
        )
        for index, start in enumerate(range(0, len(images), chunk_images))
    ]


def _prepare_for_inference(network, card: models.ModelCard, device: str, precision: str = tuning.FLOAT32):
    """Make the network fast where it runs: at `precision`, as is on CUDA, a frozen, fused graph on CPU."""
    import torch

    dtype = tuning.torch_dtype(precision)
    network = network.to(memory_format=torch.channels_last).to(dtype)
    if device == "cuda":
        return network
    example = torch.zeros(1, 3, card.preprocessing.crop, card.preprocessing.crop, device=device, dtype=dtype)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # TorchScript is deprecated in favour of torch.export, but it is still what folds batch norm
        # into the convolutions and frees the GIL for the whole forward pass on CPU (1.6x measured).
        warnings.simplefilter("ignore", FutureWarning)
        traced = network if isinstance(network, torch.jit.ScriptModule) else torch.jit.trace(network, example)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def _gated_precision(s3_client, ref: models.ModelRef, card: models.ModelCard, network, device: str, asked: str) -> str:
    """float32, or the lower precision asked for ("auto": the device's native one) if it passed the gate.

    The first load of a model version on such a device measures the gate and records it in the card.
    """
    if asked not in ("auto", *tuning.PRECISIONS):
        raise models.ModelError(f"precision must be 'auto' or one of {tuning.PRECISIONS}, not {asked!r}")
    candidate = tuning.native_lower_precision(device) if asked == "auto" else asked
    if candidate in (None, tuning.FLOAT32):
        return tuning.FLOAT32
    record = tuning.read_gate(s3_client, ref).get(candidate)
    if record is None:
        record = measure_gate(card, network, device, candidate)
        tuning.record_gate(s3_client, ref, record)
    if record["passed"]:
        return candidate
    if asked == "auto":
        return tuning.FLOAT32
    raise tuning.PrecisionRefused(
        f"model {ref.name} {ref.short_version}: in {candidate}, float32's first tag stayed in the top 5 for "
        f"{record['top5_containment']:.1%} of {record['images']} calibration images, under the "
        f"{tuning.CONTAINMENT_TARGET:.1%} required; run it in float32 or 'auto'"
    )


def measure_gate(card: models.ModelCard, network, device: str, precision: str) -> dict[str, Any]:
    """How the network at `precision` agrees with itself in float32 on the calibration photographs.

    The network is copied before each preparation, so it may be the one about to be used.
    """
    inputs = calibration_inputs(card)
    expected = tuning.top5(_prepare_for_inference(copy.deepcopy(network), card, device), inputs, tuning.FLOAT32, device)
    lower = _prepare_for_inference(copy.deepcopy(network), card, device, precision)
    return tuning.gate_record(expected, tuning.top5(lower, inputs, precision, device), precision, device)


def calibration_inputs(card: models.ModelCard):
    """The calibration photographs as the model's inputs: a stacked NCHW float32 batch, on the CPU."""
    import torch

    decoder = Tagger(card, None, None, "cpu")  # only its decode: the card's preprocessing
    return torch.stack([decoder.decode(data) for _, data in tuning.calibration_images()])


def _measured_batch(s3_client, ref, card: models.ModelCard, network, device: str, precision: str, probe_s: float):
    """The probe's choice for this model version, precision and kind of machine: read if stored, else measured."""
    identity = tuning.machine_identity(device)
    choice = tuning.cached_choice(s3_client, ref, precision, identity)
    if choice is None:
        shape = (3, card.preprocessing.crop, card.preprocessing.crop)
        choice = tuning.probe_batch(network, shape, device, precision, probe_s)
        tuning.store_choice(s3_client, ref, precision, identity, choice)
    return choice


def _plain_jpeg(data: bytes) -> bool:
    """A JPEG the device's decoder takes as it is: RGB or grey, upright, not huge, not a sliver.

    Everything else (CMYK, EXIF-rotated, other formats, what Pillow's guards stop) goes through Pillow.
    Reading the header costs microseconds; the pixels are not decoded here.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            upright = opened.getexif().get(ExifTags.Base.Orientation, 1) == 1
            return (
                opened.format == "JPEG" and opened.mode in ("RGB", "L") and upright
                and width * height <= MAX_IMAGE_PIXELS and max(width, height) <= 2 * min(width, height)
            )
    except Exception:  # noqa: BLE001 - Pillow decides what is wrong with it, with its reason
        return False


def _head(s3_client, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return s3_client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def _transient(exc: Exception) -> bool:
    """A failure of S3 or of the network on the way (worth retrying the chunk), not of the object."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code")
        return status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout")
    return isinstance(exc, S3ConnectionError | HTTPClientError | IncompleteReadError | ResponseStreamingError)


def _fetch_error(exc: Exception) -> str:
    code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
    if code == "NoSuchBucket":
        return "not found: the bucket does not exist"
    if is_not_found(exc):
        return "not found: the object does not exist"
    if code in ("AccessDenied", "403"):
        return "access denied reading the object"
    return f"fetch failed: {type(exc).__name__}: {exc}"


def _decode_error(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image: no decoder recognises the file"
    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb: {exc}"
    return f"decode failed: {type(exc).__name__}: {exc}"
