"""Hostile images through the engine: each is tagged or becomes an error row with its reason; the chunk never crashes.

Every image is made here from the real photographs (tagging_platform/photos.py), so nothing big is committed.
"""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from tagging_platform import engine, photos, tags
from tagging_platform.models import ModelRef

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _png_declaring(width: int, height: int, pixels: bytes = b"") -> bytes:
    """A greyscale PNG whose header declares width x height, with `pixels` (zlib-compressed) as its data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels, 9)) + chunk(b"IEND", b"")
    )


def _exif_rotated(image: Image.Image) -> bytes:
    """The photograph stored turned a quarter left, with EXIF orientation 6 ("turn right to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif)


@pytest.fixture(scope="module")
def hostile() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, None if it must be tagged, else the start of its error)."""
    cat = photos.photograph("chelsea")
    jpeg = photos.jpeg(cat)
    bomb_side = 10_000  # 100M pixels, over the 89.5M limit: ~100 KB of PNG that would decode to 100 MB
    return {
        "plain.jpg": (jpeg, None),
        "photo.png": (_save(cat, "PNG"), None),
        "photo.gif": (_save(cat, "GIF"), None),
        "photo.webp": (_save(cat, "WEBP", quality=90), None),
        "photo.tiff": (_save(cat, "TIFF"), None),
        "cmyk.jpg": (_save(cat.convert("CMYK"), "JPEG", quality=90), None),
        "sixteen-bit.png": (_save(cat.convert("I;16"), "PNG"), None),
        "greyscale-alpha.png": (_save(cat.convert("LA"), "PNG"), None),
        "palette.png": (_save(cat.convert("P"), "PNG"), None),
        "exif-rotated.jpg": (_exif_rotated(cat), None),
        "one-pixel.png": (_save(cat.resize((1, 1)), "PNG"), None),
        "sliver-2x40000.png": (_save(cat.resize((2, 40_000)), "PNG"), None),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "decode failed: OSError: image file is truncated"),
        "header-only.jpg": (jpeg[:200], "decode failed: OSError: "),
        "zero-bytes.jpg": (b"", "not an image: no decoder recognises the file"),
        "text.jpg": (
            b"Dear customer,\nthis is a letter, not a photograph.\n" * 20,
            "not an image: no decoder recognises the file",
        ),
        "html.png": (
            b"<!doctype html><html><body><img src=x></body></html>",
            "not an image: no decoder recognises the file",
        ),
        "bomb-30000x30000.png": (
            _png_declaring(30_000, 30_000),
            "decompression bomb: Image size (900000000 pixels) exceeds limit of 178956970 pixels",
        ),
        "bomb-10000x10000.png": (
            _png_declaring(bomb_side, bomb_side, bytes((bomb_side + 1) * bomb_side)),
            f"decompression bomb: image is 10000x10000 pixels, over the limit of {engine.MAX_IMAGE_PIXELS} pixels",
        ),
        "corrupt-crc.png": (_save(cat, "PNG")[:-20] + bytes(20), "decode failed: "),
    }


@pytest.fixture(scope="module")
def tagger(s3, model_ref: ModelRef):
    return engine.Tagger.load(s3, model_ref, device="cpu", batch_size=4, fetch_workers=2)


def _spec(uris, model_ref):
    return engine.ChunkSpec(
        partition="hostile-test",
        manifest="s3://manifests/incoming/hostile-test.json",
        manifest_etag="etag",
        index=0,
        positions=tuple(range(len(uris))),
        images=tuple(uris),
        model=model_ref,
    )


def test_hostile_images_in_one_chunk_are_each_tagged_or_an_error_row_with_its_reason(
    s3, tagger, hostile, upload_images, model_ref
):
    uris = upload_images({name: data for name, (data, _) in hostile.items()})
    rows, stats = tagger.tag(s3, _spec(uris, model_ref), run_id="hostile")

    by_name = {row["image"].rsplit("/", 1)[-1]: row for row in rows}
    assert sorted(by_name) == sorted(hostile) and len(rows) == len(hostile)  # every image exactly once
    for name, (_, error) in hostile.items():
        row = by_name[name]
        if error is None:
            assert row["status"] == tags.STATUS_OK, f"{name}: {row['error']}"
            # tags may be empty (nothing above the confidence threshold, e.g. a single pixel); the top tag is not.
            assert isinstance(row["tags"], list) and row["top_tag"] and 0 < row["top_confidence"] <= 1
        else:
            assert row["status"] == tags.STATUS_ERROR, f"{name} was tagged {row['top_tag']}"
            assert row["error"].startswith(error), f"{name}: {row['error']!r}"
            assert row["tags"] is None
    expected_ok = sum(error is None for _, error in hostile.values())
    assert (stats.images, stats.tagged, stats.errors) == (20, 12, 8) == (len(hostile), expected_ok, 20 - expected_ok)
    # The photograph of a cat is still a cat in every format and colour model that keeps its colours.
    for name in ("plain.jpg", "photo.png", "photo.webp", "photo.tiff", "cmyk.jpg", "exif-rotated.jpg"):
        assert by_name[name]["top_tag"] in CAT_CLASSES, f"{name}: {by_name[name]['top_tag']}"


def test_exif_rotation_is_applied_before_tagging(tagger):
    cat = photos.photograph("chelsea")
    upright = tagger.decode(photos.jpeg(cat, quality=92))
    rotated_with_exif = tagger.decode(_exif_rotated(cat))
    turned_without_exif = tagger.decode(_save(cat.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92))
    # Only JPEG re-encoding noise separates the EXIF-rotated file from the upright one once rotation is applied.
    assert (rotated_with_exif - upright).abs().mean() < 0.05
    assert (turned_without_exif - upright).abs().mean() > 0.3


def test_a_sliver_is_cut_to_its_centre_square_before_resizing_not_blown_up(tagger):
    """A 2x40000 PNG is a few KB; resized naively (short side to 256) it would be 256x5,120,000 pixels."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sliver = tagger.decode(_save(photos.photograph("coffee").resize((2, 40_000)), "PNG"))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert tuple(sliver.shape) == (3, 224, 224)
    assert grown_mib < 200
    # On a wide photograph (3:1) the cut changes nothing the centre crop would have kept.
    import torch
    from torchvision.transforms.v2 import functional as F

    wide = photos.photograph("astronaut").resize((1200, 400))
    prep = tagger.card.preprocessing
    naive = F.center_crop(F.resize(wide, [prep.resize], antialias=True), [prep.crop])
    naive = F.normalize(F.to_dtype(F.pil_to_tensor(naive), torch.float32, scale=True), list(prep.mean), list(prep.std))
    assert (tagger.decode(_save(wide, "PNG")) - naive).abs().mean() < 0.02
