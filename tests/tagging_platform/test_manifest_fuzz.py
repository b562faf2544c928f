"""Fuzzing the manifest parser: whatever the bytes, parse_manifest returns a Manifest or raises ManifestError.

`make test` runs TP_FUZZ_EXAMPLES inputs in all (default 2,000) split over the hypothesis tests below;
`make test-fuzz` runs 100,000 through hypothesis and 100,000 through atheris (coverage-guided libFuzzer),
which is this file run as a script:

    .venv/bin/python tests/tagging_platform/test_manifest_fuzz.py -runs=100000
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagging_platform.manifests import Manifest, ManifestError, parse_manifest

TOTAL_EXAMPLES = int(os.environ.get("TP_FUZZ_EXAMPLES", "2000"))
FUZZ_TESTS = 3
PER_TEST = max(1, -(-TOTAL_EXAMPLES // FUZZ_TESTS))
CORPUS = Path(__file__).resolve().parent.parent / "data" / "bad_manifests"
FUZZ = settings(
    max_examples=PER_TEST, deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True
)


def outcome(data: bytes) -> Manifest | ManifestError:
    """Parse as the platform does; anything but a Manifest or a ManifestError escapes and fails the caller."""
    try:
        manifest = parse_manifest(
            data,
            "s3://manifests/incoming/fuzz.json",
            allowed_image_prefixes=("images", "photos/2024/"),
            allowed_output_prefixes=("tags",),
            max_images=1000,
            max_bytes=1 << 20,
        )
    except ManifestError as exc:
        message = str(exc)
        assert message and len(message) < 1000, message[:2000]
        return exc
    assert manifest.images and all(uri.startswith(("s3://images/", "s3://photos/2024/")) for uri in manifest.images)
    assert len(set(manifest.images)) == len(manifest.images)
    return manifest


# Pieces a manifest is made of, so that random structures often get deep into the validation.
_URIS = st.sampled_from(
    [
        "s3://images/a.jpg",
        "s3://images/b/c.png",
        "s3://photos/2024/x.jpg",
        "s3://photos/2023/x.jpg",
        "s3://images/../a.jpg",
        "s3://images/./a.jpg",
        "s3://images/",
        "s3://images",
        "s3://",
        "s3:///a.jpg",
        "s3://other/a.jpg",
        "s3://images-x/a.jpg",
        "http://images/a.jpg",
        "file:///etc/passwd",
        "gs://images/a",
        "S3://images/a.jpg",
        "s3://images/a\x00.jpg",
        "s3://images/a\\b.jpg",
        "s3://images/\ud800",
        "s3://tags/out/",
        "s3://images/" + "k" * 1100,
        "s3://images/" + "é" * 600,
        "mobilenet_v2",
        "a.jpg",
        "../b.jpg",
        "",
    ]
)
_TEXT = st.text(max_size=20) | st.text(st.sampled_from('s3:/images.jpg\\\x00\n"{}[],é\ud800'), max_size=30)
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | _URIS | _TEXT
_KEYS = st.sampled_from(["images", "model", "output", "id", "source-ref", "prefix"]) | st.text(max_size=6)
_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_KEYS, inner, max_size=5), max_leaves=20
)
_MANIFESTS = st.one_of(
    st.builds(
        lambda images, extra: {"images": images, **extra},
        st.lists(_URIS | _SCALARS, max_size=6),
        st.dictionaries(st.sampled_from(["model", "output", "id"]), _URIS | _SCALARS, max_size=3),
    ),
    st.builds(
        lambda prefix, keys: [{"prefix": prefix}, *keys], _URIS | _SCALARS, st.lists(_URIS | _SCALARS, max_size=6)
    ),
    st.lists(
        st.builds(
            lambda ref, extra: {"source-ref": ref, **extra}, _URIS | _SCALARS, st.dictionaries(_KEYS, _JSON, max_size=2)
        )
        | _JSON,
        min_size=1,
        max_size=6,
    ),
    _JSON,
)


def _encode(value, how: str) -> bytes:
    if how == "lines" and isinstance(value, list):
        text = "\n".join(json.dumps(item) for item in value)
    else:
        text = json.dumps(value, indent=1 if how == "indented" else None)
    data = text.encode("utf-8", "surrogatepass")
    return b"\xef\xbb\xbf" + data if how == "bom" else data


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([b"", b"\x1f\x8b", b"\xef\xbb\xbf", b"{", b"[", b'{"images": [']))
def test_arbitrary_bytes_never_raise_anything_but_manifest_error(data, prefix):
    outcome(prefix + data)


@FUZZ
@given(_MANIFESTS, st.sampled_from(["value", "lines", "indented", "bom", "gzip"]))
def test_manifest_shaped_json_never_raises_anything_but_manifest_error(value, how):
    data = _encode(value, "value" if how == "gzip" else how)
    outcome(gzip.compress(data, mtime=0) if how == "gzip" else data)


@FUZZ
@given(_MANIFESTS, st.data())
def test_mutated_manifests_never_raise_anything_but_manifest_error(value, draw):
    """Valid-looking manifests, then cut, spliced, byte-flipped or nested: the malformed inputs customers send."""
    data = bytearray(_encode(value, draw.draw(st.sampled_from(["value", "lines"]))))
    for _ in range(draw.draw(st.integers(1, 4))):
        where = draw.draw(st.integers(0, len(data)))
        action = draw.draw(st.sampled_from(["cut", "flip", "insert", "nest", "gzip-cut"]))
        if action == "cut":
            del data[where:]
        elif action == "flip" and data:
            data[min(where, len(data) - 1)] = draw.draw(st.integers(0, 255))
        elif action == "insert":
            data[where:where] = draw.draw(
                st.sampled_from(
                    [
                        b"NaN",
                        b"-Infinity",
                        b"\n",
                        b",",
                        b"]",
                        b"}",
                        b'"',
                        b"\\u",
                        b"\x00",
                        b"\xff",
                        b"1e999",
                        b"9" * 5000,
                    ]
                )
            )
        elif action == "nest":
            depth = draw.draw(st.sampled_from([10, 1000, 50_000]))
            data[where:where] = b"[" * depth
        else:
            data = bytearray(gzip.compress(bytes(data), mtime=0)[: max(where, 2)])
    outcome(bytes(data))


def test_the_bad_manifest_corpus_under_the_fuzzing_rules_gives_manifest_errors_only():
    for path in sorted(CORPUS.iterdir()):
        if path.name != "expected.json":
            assert isinstance(outcome(path.read_bytes()), ManifestError), path.name


def test_atheris_finds_nothing_in_a_short_run(tmp_path):
    runs = max(200, TOTAL_EXAMPLES // 4)
    done = subprocess.run(
        [sys.executable, __file__, f"-runs={runs}", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"Done {runs} runs" in done.stderr


# atheris: coverage-guided fuzzing (libFuzzer) of the same property, run as a script.


def _atheris_target(data: bytes) -> None:
    outcome(data)
    if data[:1] == b"\x00":  # also through the gzip path, with the rest as the compressed content
        outcome(gzip.compress(data[1:], mtime=0))


def main() -> None:
    import inspect

    import atheris

    from tagging_platform import manifests

    # Coverage feedback from the parser itself (instrumenting everything loaded, pandas included, takes minutes).
    for obj in list(vars(manifests).values()):
        if getattr(obj, "__module__", None) != manifests.__name__:
            continue
        for function in [obj] if inspect.isfunction(obj) else list(vars(obj).values()) if inspect.isclass(obj) else []:
            if inspect.isfunction(function):
                atheris.instrument_func(function)
    args = list(sys.argv)
    if not any(not arg.startswith("-") for arg in args[1:]):
        # Seed with the bad-manifest corpus plus valid manifests, copied: libFuzzer adds to its first corpus folder.
        seeds = Path(tempfile.mkdtemp(prefix="manifest-fuzz-"))
        for path in CORPUS.iterdir():
            if path.name != "expected.json":
                shutil.copy(path, seeds / path.name)
        (seeds / "valid.json").write_text(json.dumps({"images": ["s3://images/a.jpg"], "output": "s3://tags/x/"}))
        (seeds / "valid.manifest").write_text(json.dumps([{"prefix": "s3://images/"}, "a.jpg", "b/c.jpg"]))
        (seeds / "valid.jsonl").write_text('{"source-ref": "s3://images/a.jpg"}\n{"source-ref": "s3://images/b.jpg"}\n')
        args.append(str(seeds))
    atheris.Setup(args, _atheris_target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
