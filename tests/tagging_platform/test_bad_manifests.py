"""The bad-manifest corpus: every malformed or hostile manifest gets its own named ManifestError, quickly.

The small files live in tests/data/bad_manifests/ with the message each must give in expected.json;
the big ones (10 MB strings, 100,000-deep nesting, millions of duplicates, a gzip bomb) are made here.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import time
import tracemalloc
from pathlib import Path

import pytest

from tagging_platform.manifests import ManifestError, parse_manifest
from tagging_platform.settings import Settings

CORPUS = Path(__file__).resolve().parent.parent / "data" / "bad_manifests"
EXPECTED: dict[str, str] = json.loads((CORPUS / "expected.json").read_text())
DEFAULTS = Settings()
# The deployment's allowed locations; a decompressed-size limit of 64 MiB so that the gzip bomb's
# memory bound is meaningful (the bound holds for any limit: memory follows the limit, not the bomb).
MAX_BYTES = 64 << 20
TEN_MB = 10_000_000


def parse(data: bytes, name: str):
    return parse_manifest(
        data,
        f"s3://manifests/incoming/{name}",
        allowed_image_prefixes=DEFAULTS.allowed_image_prefixes,
        allowed_output_prefixes=DEFAULTS.allowed_output_prefixes,
        max_images=DEFAULTS.max_manifest_images,
        max_bytes=MAX_BYTES,
    )


def _gzip_bomb(members: int = 256) -> bytes:
    """About 4 MB that inflates to 4 GiB: 256 gzip members of 16 MiB of zeros each (read as one stream)."""
    return gzip.compress(bytes(16 << 20), compresslevel=9, mtime=0) * members


def _duplicates(count: int) -> bytes:
    return b'{"images": [' + b",".join([b'"s3://images/a.jpg"'] * count) + b"]}"


# name -> (how to make it, the message it must give, seconds it may take on a loaded 2-core machine)
GENERATED = {
    "ten_mb_image_key": (
        lambda: json.dumps({"images": ["s3://images/a.jpg", "s3://images/" + "k" * TEN_MB + ".jpg"]}).encode(),
        r"^entry 2: s3://images/k{188}\.\.\.: the key is 10000004 bytes, over S3's limit of 1024$",
        10,
    ),
    "ten_mb_id": (
        lambda: json.dumps({"images": ["s3://images/a.jpg"], "id": "i" * TEN_MB}).encode(),
        r'^field "id": must be at most 200 printable characters$',
        10,
    ),
    "ten_mb_field_name": (
        lambda: json.dumps({"images": ["s3://images/a.jpg"], "f" * TEN_MB: 1}).encode(),
        r'^field "f{200}\.\.\.": not a manifest field \(a manifest has only images, model, output, id, reuse, output_format, max_labels, min_confidence\)$',
        10,
    ),
    "ten_mb_model_name": (
        lambda: json.dumps({"images": ["s3://images/a.jpg"], "model": "m" * TEN_MB}).encode(),
        r'^field "model": m{200}\.\.\. is not a model name',
        10,
    ),
    "ten_mb_output": (
        lambda: json.dumps({"images": ["s3://images/a.jpg"], "output": "s3://tags/" + "o" * TEN_MB}).encode(),
        r"^field \"output\": s3://tags/o{190}\.\.\.: the key is longer than S3's limit of 1024 bytes$",
        10,
    ),
    "ten_mb_sagemaker_prefix": (
        lambda: json.dumps([{"prefix": "s3://images/" + "p/" * (TEN_MB // 2)}, "a.jpg"]).encode(),
        r"^the \"prefix\" element: s3://images/(p/){94}\.\.\.: the key is longer than S3's limit of 1024 bytes$",
        10,
    ),
    "ten_mb_jsonl_line": (
        lambda: b'{"source-ref": "s3://images/a.jpg"}\n{"source-ref": "s3://images/' + b"l" * TEN_MB + b'.jpg"}\n',
        r"^line 2: s3://images/l{188}\.\.\.: the key is 10000004 bytes, over S3's limit of 1024$",
        10,
    ),
    "nested_100k_arrays": (
        lambda: b"[" * 100_000 + b"]" * 100_000,
        r"^not valid JSON: nested too deeply$",
        5,
    ),
    "nested_100k_under_images": (
        lambda: b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        r"^not valid JSON: nested too deeply$",
        5,
    ),
    "nested_100k_objects": (
        lambda: b'{"images": ["s3://images/a.jpg"], "id": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
        r"^not valid JSON: nested too deeply$",
        5,
    ),
    "nested_100k_in_jsonl_line": (
        lambda: (
            b'{"source-ref": "s3://images/a.jpg"}\n{"source-ref": "s3://images/b.jpg", "x": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}\n"
        ),
        r"^line 2: not valid JSON: nested too deeply$",
        5,
    ),
    "integer_of_100k_digits": (
        lambda: b'{"images": ["s3://images/a.jpg"], "id": ' + b"7" * 100_000 + b"}",
        r"^not valid JSON: Exceeds the limit \(4300 digits\) for integer string conversion",
        5,
    ),
    "two_million_duplicate_entries": (
        functools.partial(_duplicates, 2_000_000),
        r"^entry 2 repeats entry 1: s3://images/a\.jpg$",
        30,
    ),
    "one_million_duplicate_jsonl_lines": (
        lambda: b"\n".join([b'{"source-ref": "s3://images/a.jpg"}'] * 1_000_000),
        r"^line 2 repeats line 1: s3://images/a\.jpg$",
        30,
    ),
    "gzip_bomb_4_gib": (
        _gzip_bomb,
        rf"^the manifest decompresses to more than {MAX_BYTES} bytes$",
        10,
    ),
}


def _assert_rejected(data: bytes, name: str, expected: str, seconds: float) -> str:
    started = time.perf_counter()
    try:
        parse(data, name)
    except ManifestError as exc:
        message = str(exc)
    else:
        pytest.fail(f"{name} was accepted")
    # Any other exception type fails the test as it propagates: ManifestError is the only documented one.
    elapsed = time.perf_counter() - started
    assert re.search(expected, message), f"{name}: {message!r} does not match {expected!r}"
    assert len(message) < 500, f"{name}: a {len(message)}-character message echoes too much customer data"
    assert elapsed < seconds, f"{name} took {elapsed:.1f} s"
    return message


def test_the_corpus_has_at_least_30_manifests_each_with_an_expected_error():
    files = sorted(p.name for p in CORPUS.iterdir() if p.name != "expected.json")
    assert files == sorted(EXPECTED)
    assert len(files) + len(GENERATED) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_corpus_file_is_rejected_with_its_named_error_in_bounded_time_and_memory(name):
    data = (CORPUS / name).read_bytes()
    tracemalloc.start()
    try:
        _assert_rejected(data, name, EXPECTED[name], seconds=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A gzipped file costs one 16 MiB decompression piece on top.
    bound = (8 << 20) + (16 << 20 if data[:2] == b"\x1f\x8b" else 0)
    assert peak < bound, f"{name} needed {peak >> 20} MiB"


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_each_generated_hostile_manifest_is_rejected_with_its_named_error_in_bounded_time(name):
    make, expected, seconds = GENERATED[name]
    _assert_rejected(make(), name, expected, seconds)


def test_the_gzip_bomb_stops_at_the_size_limit_without_inflating_it_all():
    bomb = _gzip_bomb()
    assert len(bomb) < 5 << 20  # ~4 MB on disk, 4 GiB inflated
    tracemalloc.start()
    try:
        _assert_rejected(bomb, "bomb.json.gz", GENERATED["gzip_bomb_4_gib"][1], seconds=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The limit (64 MiB) plus one 16 MiB read: memory follows the limit, never the 4 GiB the bomb claims.
    assert peak < 200 << 20, f"the gzip bomb took {peak >> 20} MiB"


def test_the_same_bomb_under_a_smaller_limit_needs_proportionally_less_memory():
    bomb = _gzip_bomb(members=32)  # 512 MiB inflated from about 0.5 MB
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError, match=r"^the manifest decompresses to more than 1000000 bytes$"):
            parse_manifest(bomb, "bomb.json.gz", allowed_image_prefixes=("images",), max_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20


def tag_manifest_job():
    """Rebuilt in every step process, which reads the same settings from the environment."""
    from definitions import build_definitions

    return build_definitions(Settings.from_env()).resolve_job_def("tag_manifest")


def test_a_corpus_manifest_fails_the_run_at_the_manifest_step_and_nothing_is_half_processed(
    registered_instance, s3, settings
):
    """JSON Lines with one bad line in the middle: lines 1-2 are fine, yet not one image is tagged."""
    import uuid

    import dagster as dg

    from tests.conftest import record_manifest

    name = "jsonl_bad_line_in_middle.jsonl"
    partition = f"corpus-{uuid.uuid4().hex[:6]}"
    key = f"{settings.manifest_prefix}{partition}.jsonl"
    record_manifest(s3, settings, partition, (CORPUS / name).read_bytes(), suffix=".jsonl")
    registered_instance.add_dynamic_partitions("manifests", [partition])

    result = dg.execute_job(
        dg.reconstructable(tag_manifest_job),
        instance=registered_instance,
        tags={"dagster/partition": partition},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "manifest"
    reason = EXPECTED[name].strip("^$")
    assert re.search(
        rf"Failure: manifest s3://{settings.manifest_bucket}/{re.escape(key)} rejected: {reason}",
        failure.step_failure_data.error.message,
    ), failure.step_failure_data.error.message
    # No step after the manifest ran: nothing planned, tagged, stored or published for this batch.
    started = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START}
    assert started == {"manifest"}
    assert not s3.list_objects_v2(Bucket=settings.warehouse_bucket, Prefix=f"chunks/partition={partition}/").get(
        "Contents"
    )
    published = s3.list_objects_v2(Bucket=settings.output_bucket, Prefix=f"{settings.output_prefix}{partition}/")
    assert [o["Key"] for o in published.get("Contents", [])] == [f"{settings.output_prefix}{partition}/_REJECTED.json"]
    rejected = json.loads(
        s3.get_object(Bucket=settings.output_bucket, Key=f"{settings.output_prefix}{partition}/_REJECTED.json")[
            "Body"
        ].read()
    )
    assert rejected["status"] == "rejected" and rejected["manifest"] == f"s3://{settings.manifest_bucket}/{key}"
    assert re.search(reason, rejected["error"])
