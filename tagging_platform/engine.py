"""The streaming tagging engine: concurrent fetch and decode feeding batched inference, bounded in memory."""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import resource
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as S3ConnectionError
from PIL import ExifTags, Image, UnidentifiedImageError

from tagging_platform import layout, models, tags, tuning
from tagging_platform.s3 import is_not_found, list_objects, read_bytes, split_uri

# Pillow's own guard warns at 89M pixels and fails at twice that; we fail at the warning level, with a reason.
MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# A large image is reduced by a whole factor that leaves at least this many times the resize target before
# the antialiased resize: Pillow's thumbnail default, indistinguishable from resizing the full image.
REDUCING_GAP = 2
# EXIF orientation -> the transpose that turns the image upright (as ImageOps.exif_transpose does).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

log = logging.getLogger(__name__)


class ImageTooLarge(Image.DecompressionBombError):
    """An image whose header declares more pixels than allowed; nothing of it was decoded."""


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

    @property
    def result_prefix(self) -> str:
        """Where the chunk's parts and marker land: derived from its content, so a retry finds earlier work."""
        content = "\n".join((self.manifest_etag, *self.images))
        digest = hashlib.sha256(content.encode()).hexdigest()[:16]
        return layout.chunk_prefix(self.partition, self.model.name, self.model.short_version, self.index, digest)

    @property
    def progress_key(self) -> str:
        """Where the chunk's figures so far land while it runs (the API's batch status reads them)."""
        return layout.progress_key(self.partition, self.model.name, self.model.short_version, self.index)

    @property
    def result_key(self) -> str:
        """The chunk's completion marker, written last: which parts make the chunk, and the figures."""
        return f"{self.result_prefix}_COMPLETE.json"


@dataclass(frozen=True)
class PlannedBatch:
    """What planning decided for a batch besides its chunks: the rows it took from the reuse index.

    Those rows are stored once, at planning, and reach the merge without any tagging step.
    """

    partition: str
    model: models.ModelRef
    reused: int
    # The Parquet object holding the reused rows; None when nothing was reused.
    reused_key: str | None


def plan_batch(
    s3_client, bucket: str, partition: str, manifest_etag: str, model: models.ModelRef, reused_rows
) -> PlannedBatch:
    """Store the rows planning reused (one PUT, named after the manifest version) and describe the batch."""
    if not reused_rows.num_rows:
        return PlannedBatch(partition, model, 0, None)
    digest = hashlib.sha256(manifest_etag.encode()).hexdigest()[:16]
    key = layout.reused_key(partition, model.name, model.short_version, digest)
    s3_client.put_object(Bucket=bucket, Key=key, Body=tags.to_parquet_bytes(reused_rows))
    return PlannedBatch(partition, model, reused_rows.num_rows, key)


def read_reused(s3_client, bucket: str, planned: PlannedBatch):
    if planned.reused_key is None:
        return tags.empty_tag_table()
    return tags.conform(
        tags.from_parquet_bytes(s3_client.get_object(Bucket=bucket, Key=planned.reused_key)["Body"].read())
    )


@dataclass
class ChunkStats:
    images: int = 0
    tagged: int = 0  # images with tags
    errors: int = 0
    skipped: bool = False
    # Images whose rows earlier attempts had committed as parts: this attempt did not tag them again.
    resumed: int = 0
    parts: int = 0  # parts this attempt committed
    device_decoded: int = 0  # images whose JPEG the tagger's device decoded (nvJPEG on CUDA), not Pillow
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
            card,
            ref,
            network,
            device,
            batch_size=choice.batch_size,
            precision=chosen,
            memory_format=choice.memory_format,
            batch_choice=choice,
            load_s=time.perf_counter() - started,
            **options,
        )

    def decode(self, data: bytes):
        """Bytes of an image file to the model's input tensor, or an exception naming the problem."""
        return self.normalise(self.pixels(data))

    def pixels(self, data: bytes):
        """Bytes of an image file to its resized and cropped CHW uint8 pixels, or an exception naming the problem.

        Normalising waits for the batch: one vectorised pass over the whole batch in the inference thread instead
        of one small parallel region per image in the fetch threads, and a quarter of the bytes in flight.
        """
        with self.open_image(data) as opened:
            return self.opened_pixels(opened)

    def open_image(self, data: bytes, max_pixels: int = MAX_IMAGE_PIXELS):
        """The image's header read (Pillow opens lazily: no pixel is decoded yet), refused over `max_pixels`.

        A JPEG is set to decode at the smallest scale that still covers the resize target, so its `size` is
        then what decoding will hold.
        """
        opened = Image.open(io.BytesIO(data))
        width, height = opened.size
        if width * height > max_pixels:
            opened.close()
            raise ImageTooLarge(f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels")
        # JPEG draft mode decodes at a reduced scale that still covers the resize target: far less work.
        resize = self.card.preprocessing.resize
        opened.draft("RGB", (resize, resize))
        return opened

    def opened_pixels(self, opened):
        """An opened image (open_image) to uint8 model pixels, holding one full-size copy at most.

        The full-size pixels are reduced by a whole factor in their own mode as soon as they are decoded,
        leaving at least REDUCING_GAP times the resize target (as Pillow's thumbnail does), and only the
        reduced image is converted, turned upright and resized.
        """
        orientation = opened.getexif().get(ExifTags.Base.Orientation, 1)
        image = opened if opened.mode in ("RGB", "L") else opened.convert("RGB")
        factor = min(image.size) // (self.card.preprocessing.resize * REDUCING_GAP)
        if factor > 1:
            image = image.reduce(factor)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if orientation in _EXIF_TRANSPOSE:
            image = image.transpose(_EXIF_TRANSPOSE[orientation])
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
        if isinstance(image, torch.Tensor):
            return _resize_then_crop(image, prep.resize, prep.crop)
        if prep.resize < prep.crop:  # the crop pads: no box of the source holds it
            return F.pil_to_tensor(_resize_then_crop(image, prep.resize, prep.crop))
        return F.pil_to_tensor(_resize_crop_box(image, prep.resize, prep.crop))

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
        checkpoint: Checkpoint | None = None,
    ) -> tuple[list[dict[str, Any]], ChunkStats]:
        """Tag every image of a chunk. Images that fail become error rows; nothing is dropped.

        With a `checkpoint`, the rows made so far are handed to its `commit` whenever it is due and only
        the rows not yet committed are returned.

        Three stages: `_fetched` fetches and decodes in a thread pool ahead of inference (at most two batches in
        flight, so memory follows the batch size and never the chunk size), `_tag_batch` infers a full batch,
        and `_ChunkTally` keeps the rows, the figures, the checkpoints and the progress reports.
        """
        tally = _ChunkTally(self._chunk_stats(spec), self._row_lineage(spec, run_id), checkpoint)
        pending: list[_Decoded] = []
        for decoded in self._fetched(s3_client, spec, tally.stats):
            if decoded.error is not None:
                tally.add_error(decoded)
            else:
                pending.append(decoded)
            if len(pending) == self.batch_size:
                self._tag_batch(pending, tally)
                pending = []
            tally.commit_if_due()
            tally.report_if_due(progress, progress_every_s)
        if pending:
            self._tag_batch(pending, tally)
        return tally.finish()

    def _chunk_stats(self, spec: ChunkSpec) -> ChunkStats:
        """A chunk's figures before any image: how the model runs here, and where that choice came from."""
        choice = self.batch_choice or tuning.BatchChoice(self.batch_size, self.memory_format)
        return ChunkStats(
            images=len(spec.images),
            model_load_s=self.load_s,
            precision=self.precision,
            batch_size=self.batch_size,
            memory_format=self.memory_format,
            batch_source=choice.source,
            probe_ips=choice.rates_text(),
        )

    def _row_lineage(self, spec: ChunkSpec, run_id: str) -> dict[str, Any]:
        """What every row of the chunk carries besides its image: which model, in which precision, from where."""
        return {
            "model_name": self.ref.name,
            "model_version": self.ref.version,
            "precision": self.precision,
            "manifest": spec.manifest,
            "partition": spec.partition,
            "chunk": spec.index,
            "run_id": run_id,
        }

    def _fetched(self, s3_client, spec: ChunkSpec, stats: ChunkStats) -> Iterator[_Decoded]:
        """The chunk's images fetched and decoded by the pool, in order, at most two batches ahead of the caller.

        With a `jpeg_device`, the pool only fetches plain JPEGs and the device decodes each batch of them
        just before inference (`_tag_batch`).
        """
        with ThreadPoolExecutor(self.fetch_workers, thread_name_prefix="fetch-decode") as pool:
            in_flight: collections.deque[Future[_Decoded]] = collections.deque()
            work = iter(zip(spec.positions, spec.images, strict=True))
            while True:
                for item in itertools.islice(work, 2 * self.batch_size - len(in_flight)):
                    in_flight.append(pool.submit(self._fetch_and_decode, s3_client, *item))
                if not in_flight:
                    return
                decoded = in_flight.popleft().result()
                stats.fetch_s += decoded.fetch_s
                stats.decode_s += decoded.decode_s
                yield decoded

    def _tag_batch(self, batch: list[_Decoded], tally: _ChunkTally) -> None:
        """Decode what waits for the device, infer the batch at once, and add a row for each image."""
        import torch

        batch, on_device, decode_s = self._decode_on_device(batch)
        tally.stats.device_decoded += on_device
        tally.stats.decode_s += decode_s
        for decoded in batch:
            if decoded.error is not None:
                tally.add_error(decoded)
        batch = [d for d in batch if d.error is None]
        if not batch:
            return
        infer_started = time.perf_counter()
        predictions = self.predict(torch.stack([d.pixels.to(self.device, non_blocking=True) for d in batch]))
        tally.stats.inference_s += time.perf_counter() - infer_started
        tally.add_tagged(batch, predictions)

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
        except Exception as exc:
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
                position,
                image,
                etag,
                error=_decode_error(exc),
                fetch_s=fetched - started,
                decode_s=time.perf_counter() - fetched,
            )
        return _Decoded(
            position, image, etag, pixels, fetch_s=fetched - started, decode_s=time.perf_counter() - fetched
        )


class _ChunkTally:
    """A chunk's rows and figures as its batches come: error and tag rows, checkpoint commits, progress reports."""

    def __init__(self, stats: ChunkStats, lineage: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        self.stats, self.lineage, self.checkpoint = stats, lineage, checkpoint
        self.rows: list[dict[str, Any]] = []
        self.committed = 0
        self.started = self.last_report = time.perf_counter()

    def add_error(self, decoded: _Decoded) -> None:
        self.stats.errors += 1
        self.rows.append(self._row(decoded, tags.STATUS_ERROR, datetime.now(UTC), error=decoded.error))

    def add_tagged(self, batch: list[_Decoded], predictions: list[tuple[list[dict[str, Any]], str, float]]) -> None:
        now = datetime.now(UTC)
        for decoded, (kept, top, top_conf) in zip(batch, predictions, strict=True):
            self.rows.append(self._row(decoded, tags.STATUS_OK, now, tags=kept, top_tag=top, top_confidence=top_conf))

    def _row(self, decoded: _Decoded, status: str, tagged_at: datetime, **outcome: Any) -> dict[str, Any]:
        """One row of the tag table; what `outcome` leaves out is null."""
        return {
            "image": decoded.image,
            "position": decoded.position,
            "etag": decoded.etag,
            "status": status,
            "error": None,
            "tags": None,
            "top_tag": None,
            "top_confidence": None,
            **outcome,
            "tagged_at": tagged_at,
            **self.lineage,
        }

    def commit_if_due(self) -> None:
        if self.checkpoint and self.checkpoint.due(len(self.rows)):
            self.checkpoint.commit(self.rows)
            self.committed += len(self.rows)
            self.rows = []

    def report_if_due(self, progress: Callable[[ChunkStats], None] | None, every_s: float) -> None:
        if progress and time.perf_counter() - self.last_report >= every_s:
            self.last_report = time.perf_counter()
            self._count()
            progress(self.stats)

    def finish(self) -> tuple[list[dict[str, Any]], ChunkStats]:
        """The rows not yet committed, and the chunk's figures."""
        self._count()
        return self.rows, self.stats

    def _count(self) -> None:
        self.stats.wall_s = time.perf_counter() - self.started
        self.stats.tagged = self.committed + len(self.rows) - self.stats.errors


class Checkpoint:
    """Commits a chunk's rows as it goes: one Parquet part per interval, each a single atomic PUT.

    A part is named by the first position it holds and by the attempt that wrote it, so two attempts of
    the same chunk (a pod presumed dead that is still running) never overwrite each other's parts.
    """

    def __init__(self, s3_client, bucket: str, spec: ChunkSpec, every_images: int, every_s: float) -> None:
        self.s3_client, self.bucket, self.spec = s3_client, bucket, spec
        self.every_images, self.every_s = every_images, every_s
        self.attempt = uuid.uuid4().hex[:12]
        self.keys: list[str] = []
        self._since = time.monotonic()

    def due(self, rows: int) -> bool:
        return rows > 0 and (rows >= self.every_images or time.monotonic() - self._since >= self.every_s)

    def commit(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            first = min(row["position"] for row in rows)
            key = f"{self.spec.result_prefix}part-{first:012d}-{self.attempt}.parquet"
            self.s3_client.put_object(Bucket=self.bucket, Key=key, Body=tags.to_parquet_bytes(tags.tag_table(rows)))
            self.keys.append(key)
        self._since = time.monotonic()


@dataclass(frozen=True)
class _Committed:
    """What earlier attempts of a chunk committed: parts that add new images, and how those rows ended."""

    keys: list[str]
    positions: set[int]
    tagged: int
    errors: int


def _committed_parts(s3_client, bucket: str, spec: ChunkSpec) -> _Committed:
    """The chunk's parts already in S3, in key order; a part that adds no new image (a zombie's) is left out."""
    keys, positions, tagged, errors = [], set(), 0, 0
    listed = sorted(item["Key"] for item in list_objects(s3_client, bucket, f"{spec.result_prefix}part-"))
    for key in listed:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        part = pq.read_table(io.BytesIO(body), columns=["position", "status"]).to_pydict()
        new = [(p, st) for p, st in zip(part["position"], part["status"], strict=True) if p not in positions]
        if not new:
            continue
        keys.append(key)
        positions.update(p for p, _ in new)
        errors += sum(st == tags.STATUS_ERROR for _, st in new)
        tagged += sum(st != tags.STATUS_ERROR for _, st in new)
    return _Committed(keys, positions, tagged, errors)


def run_chunk(
    s3_client,
    warehouse_bucket: str,
    spec: ChunkSpec,
    run_id: str,
    load_tagger: Callable[[], Tagger],
    progress: Callable[[ChunkStats], None] | None = None,
    checkpoint_images: int = 10_000,
    checkpoint_s: float = 120.0,
) -> ChunkStats:
    """Tag what of a chunk no earlier attempt committed, in checkpointed parts, then write its marker last.

    Each part is one PUT (atomic in S3). A retried attempt lists the chunk's parts and tags only the images
    none of them holds, so a lost attempt loses at most one checkpoint interval. The marker lists the
    parts that make the chunk; the merge reads only those, and a chunk with a marker is never tagged again.
    """
    marker = _marker(s3_client, warehouse_bucket, spec)
    if marker is not None:
        fields = {f.name for f in dataclasses.fields(ChunkStats)}
        return ChunkStats(**{k: v for k, v in marker["stats"].items() if k in fields - {"skipped"}}, skipped=True)
    started = time.perf_counter()
    committed = _committed_parts(s3_client, warehouse_bucket, spec)
    checkpoint = Checkpoint(s3_client, warehouse_bucket, spec, checkpoint_images, checkpoint_s)
    rest = [(p, i) for p, i in zip(spec.positions, spec.images, strict=True) if p not in committed.positions]

    def report(stats: ChunkStats) -> None:
        figures = {
            "images": len(spec.images),
            "tagged": stats.tagged + committed.tagged,
            "errors": stats.errors + committed.errors,
        }
        try:
            s3_client.put_object(Bucket=warehouse_bucket, Key=spec.progress_key, Body=json.dumps(figures).encode())
        except Exception as exc:  # noqa: BLE001 - progress is a courtesy: S3 away must not fail the chunk, its marker will
            log.debug("chunk %s: progress not written (%s)", spec.progress_key, exc)
        if progress:
            progress(stats)

    if rest:
        remaining = dataclasses.replace(spec, positions=tuple(p for p, _ in rest), images=tuple(i for _, i in rest))
        rows, stats = load_tagger().tag(s3_client, remaining, run_id, report, checkpoint=checkpoint)
        write_started = time.perf_counter()
        checkpoint.commit(rows)
        stats.write_s = time.perf_counter() - write_started
    else:
        stats = ChunkStats()
    stats.images, stats.resumed, stats.parts = len(spec.images), len(committed.positions), len(checkpoint.keys)
    stats.tagged += committed.tagged
    stats.errors += committed.errors
    stats.wall_s = time.perf_counter() - started
    stats.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    marker = {"parts": committed.keys + checkpoint.keys, "stats": stats.as_dict()}
    s3_client.put_object(Bucket=warehouse_bucket, Key=spec.result_key, Body=json.dumps(marker).encode())
    return stats


def chunk_stats(s3_client, warehouse_bucket: str, spec: ChunkSpec) -> dict[str, Any]:
    """The figures of the attempt that completed the chunk (stored in its marker)."""
    marker = _marker(s3_client, warehouse_bucket, spec)
    return marker["stats"] if marker else {}


def read_chunk(s3_client, warehouse_bucket: str, spec: ChunkSpec):
    """The chunk's rows from the parts its marker lists, each image once (the first part that holds it)."""
    marker = _marker(s3_client, warehouse_bucket, spec)
    if marker is None:
        raise FileNotFoundError(f"chunk {spec.index} of {spec.partition} has no marker at {spec.result_key}")
    parts = [
        tags.conform(tags.from_parquet_bytes(s3_client.get_object(Bucket=warehouse_bucket, Key=key)["Body"].read()))
        for key in marker["parts"]
    ]
    return first_row_per_position(pa.concat_tables(parts) if parts else tags.empty_tag_table())


def first_row_per_position(table):
    """One row per position, the first in table order: a part a presumed-dead attempt wrote adds nothing twice."""
    if len(pc.unique(table.column("position"))) == table.num_rows:
        return table
    numbered = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    keep = numbered.group_by("position").aggregate([("_row", "min")]).column("_row_min")
    return table.take(pc.take(keep, pc.sort_indices(keep)))


def _marker(s3_client, bucket: str, spec: ChunkSpec) -> dict[str, Any] | None:
    body = read_bytes(s3_client, bucket, spec.result_key)
    return json.loads(body) if body is not None else None


def chunk_specs(
    partition: str,
    manifest: str,
    manifest_etag: str,
    positions: Sequence[int],
    images: Sequence[str],
    model: models.ModelRef,
    chunk_images: int,
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
        # into the convolutions and frees the GIL for the whole forward pass on CPU.
        warnings.simplefilter("ignore", FutureWarning)
        # No check_trace: re-running the trace to compare graphs doubles a load's cost and guards against
        # data-dependent control flow, which a classifier's forward pass does not have; the model's canary
        # photographs check its output instead.
        traced = (
            network
            if isinstance(network, torch.jit.ScriptModule)
            else torch.jit.trace(network, example, check_trace=False)
        )
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


def _resize_then_crop(image, resize: int, crop: int):
    """The card's preprocessing as torchvision spells it: the short side resized to `resize`, the centre cropped."""
    from torchvision.transforms.v2 import functional as F

    return F.center_crop(F.resize(image, [resize], antialias=True), [crop])


def _resize_crop_box(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """`_resize_then_crop` for a PIL image, resampling only the source box that the centre crop keeps.

    The resize and crop sizes are torchvision's own arithmetic, so each output pixel has the same centre and
    the same filter support in the source as it would after the whole resize: the pixels differ by rounding
    at most, and the resize does a fraction of the work (the crop drops a quarter to half of the resized image).
    """
    width, height = image.size
    if width <= height:
        new_width, new_height = resize, int(resize * height / width)
    else:
        new_width, new_height = int(resize * width / height), resize
    left, top = round((new_width - crop) / 2.0), round((new_height - crop) / 2.0)
    scale_x, scale_y = width / new_width, height / new_height
    box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
    return image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)


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
                opened.format == "JPEG"
                and opened.mode in ("RGB", "L")
                and upright
                and width * height <= MAX_IMAGE_PIXELS
                and max(width, height) <= 2 * min(width, height)
            )
    except Exception:  # noqa: BLE001 - Pillow decides what is wrong with it, with its reason
        return False


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
