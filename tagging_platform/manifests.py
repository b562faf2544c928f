"""Customer manifests: reading the three accepted formats, validating every entry, and naming batches."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

NATIVE_FIELDS = ("images", "model", "output", "id", "reuse")
MAX_ID_CHARS = 200
MAX_PARTITION_NAME = 80

_GZIP_MAGIC = b"\x1f\x8b"
# Decompressing in pieces bounds the memory a gzip bomb can claim to max_bytes plus one piece.
_GUNZIP_PIECE = 1 << 24
# Error messages echo customer data; a multi-megabyte "URI" must not become a multi-megabyte message.
_SHOWN_CHARS = 200

_BUCKET = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# Cc control characters, and lone surrogates (they cannot be encoded for S3); backslashes are
# rejected too because some S3 clients and tools treat them as path separators.
_BAD_KEY_CHARS = r"\x00-\x1f\x7f-\x9f\ud800-\udfff\\"
_S3_URI = re.compile(rf"s3://({_BUCKET})(?:/(.*))?\Z", re.DOTALL)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# The common case, a valid image URI, costs one match plus one search; the slower diagnosis in
# _image_problem runs only for an entry that is about to be rejected.
_IMAGE_URI = re.compile(rf"s3://{_BUCKET}/[^{_BAD_KEY_CHARS}]*[^{_BAD_KEY_CHARS}/]\Z")
_BAD_KEY_CHAR = re.compile(rf"[{_BAD_KEY_CHARS}]")
_DOT_SEGMENT = re.compile(r"/\.\.?(?=/|\Z)")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder(parse_constant=lambda name: _no_constant(name))
# S3 keys are at most 1024 bytes of UTF-8; a URI this short cannot hold a longer key, so only longer
# URIs pay for encoding theirs.
MAX_KEY_BYTES = 1024
_SHORT_URI = MAX_KEY_BYTES // 4
_MODEL = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}(@[A-Za-z0-9:._-]{1,100})?\Z")

_COMPRESSION_EXTENSION = re.compile(r"\.gz\Z", re.IGNORECASE)
_MANIFEST_EXTENSION = re.compile(r"\.(?:jsonl?|manifest)\Z", re.IGNORECASE)
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_LOOKS_HASHED = re.compile(r"(?:\A|-)[0-9a-f]{8}\Z")


class ManifestError(ValueError):
    """A manifest that cannot be accepted; the message names the entry or line and the problem, for the customer."""


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its images in order, and what it asked for."""

    source: str
    format: str
    images: tuple[str, ...]
    model: str | None
    output: str | None
    id: str | None
    # Whether images already tagged by the same model version (same ETag) take their earlier tags.
    reuse: bool = True

    def table(self) -> pd.DataFrame:
        """One row per image: image_uri and its 0-based position in the manifest."""
        return pd.DataFrame(
            {
                "image_uri": pd.Series(self.images, dtype=str),
                "position": pd.Series(range(len(self.images)), dtype="int64"),
            }
        )


def parse_manifest(
    data: bytes,
    source: str,
    *,
    allowed_image_prefixes: Sequence[str],
    allowed_output_prefixes: Sequence[str] = (),
    max_images: int = 10_000_000,
    max_bytes: int = 2_000_000_000,
) -> Manifest:
    """Read a manifest in any accepted format (gzipped or not); raise ManifestError for anything unacceptable."""
    rules = _Rules(
        _allowed(allowed_image_prefixes),
        allowed_image_prefixes,
        _allowed(allowed_output_prefixes),
        allowed_output_prefixes,
        max_images,
    )
    text = _text(data, max_bytes)
    start = _JSON_SPACE.match(text).end()
    if start == len(text):
        raise ManifestError("the manifest is empty: it lists no images")
    try:
        whole = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ManifestError("not valid JSON: nested too deeply") from None
    except _NotJson as exc:
        raise ManifestError(f"not valid JSON: {exc}") from None
    except ValueError as exc:
        # A JSON Lines file is not one JSON value, so it lands here; other broken JSON gets the parser's
        # own message, which says at which line and column the document breaks.
        if not (text.startswith("{", start) and _first_line_is_jsonl(text, start)):
            raise ManifestError(f"not valid JSON: {exc}") from None
        return _jsonl(text, source, rules)
    if isinstance(whole, dict):
        if "source-ref" in whole and "images" not in whole:
            line = text.count("\n", 0, start) + 1
            images = rules.images([whole["source-ref"]], "line", lambda: [line])
            return Manifest(source, "jsonl", images, None, None, None)
        return _native(whole, source, rules)
    if isinstance(whole, list):
        return _sagemaker(whole, source, rules)
    raise ManifestError(f"a manifest is a JSON object, a JSON array or JSON Lines, not a JSON {_json_type(whole)}")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """"s3://bucket/key" -> ("bucket", "key"); the key is "" for "s3://bucket" or "s3://bucket/"."""
    match = _S3_URI.match(uri)
    if match:
        return match.group(1), match.group(2) or ""
    scheme = _SCHEME.match(uri)
    if scheme and scheme.group(1) != "s3":
        raise ManifestError(f'{_show(uri)} is not an s3:// URI (scheme "{scheme.group(1)}" is not accepted)')
    if uri.startswith("s3://"):
        bucket = uri[5:].partition("/")[0]
        if not bucket:
            raise ManifestError(f"{_show(uri)} has no bucket")
        raise ManifestError(f'{_show(uri)}: "{_show(bucket)}" is not a valid bucket name')
    raise ManifestError(f"{_show(uri)} is not an s3:// URI (expected s3://bucket/key)")


def partition_key_for(manifest_key: str, prefix: str = "") -> str:
    """A Dagster-safe, readable partition key for a manifest's S3 key; different keys get different partitions.

    "incoming/batch-42.json" under prefix "incoming/" is simply "batch-42". Any other shape keeps a
    readable stem and gains "-" and 8 hex digits of the key's SHA-256, which is what keeps
    "a b.json" apart from "a-b.json", and "a.jsonl" or "a.json.gz" apart from "a.json".
    """
    stem = manifest_key[len(prefix) :] if manifest_key.startswith(prefix) else manifest_key
    stem = _COMPRESSION_EXTENSION.sub("", stem)
    stem = _MANIFEST_EXTENSION.sub("", stem)
    name = _UNSAFE_RUN.sub("-", stem).strip("-.")[:MAX_PARTITION_NAME].rstrip("-.")
    # Only the one canonical shape maps to a bare name, so a bare name identifies its key; and a bare
    # name never looks like a hashed one, so it cannot collide with another key's hashed name either.
    if name and manifest_key == f"{prefix}{name}.json" and not _LOOKS_HASHED.search(name):
        return name
    # surrogatepass: a key that is not valid Unicode still deserves a partition rather than a crash.
    digest = hashlib.sha256(manifest_key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name}-{digest}" if name else digest


@dataclass(frozen=True)
class _Rules:
    """What this deployment accepts, with the allowed prefixes normalised for str.startswith."""

    image_prefixes: tuple[str, ...]
    configured_image_prefixes: Sequence[str]
    output_prefixes: tuple[str, ...]
    configured_output_prefixes: Sequence[str]
    max_images: int

    def too_many(self) -> ManifestError:
        return ManifestError(f"the manifest lists more than {self.max_images} images, the most this deployment accepts")

    def images(
        self, uris: list, unit: str = "entry", numbers: Callable[[], Sequence[int]] | None = None
    ) -> tuple[str, ...]:
        """Check every image URI; `numbers` gives each image's entry or line number, for messages only."""
        if not uris:
            raise ManifestError("the manifest lists no images")
        if len(uris) > self.max_images:
            raise self.too_many()
        match, dot_segment, allowed = _IMAGE_URI.match, _DOT_SEGMENT.search, self.image_prefixes
        # One combined test per entry in a tight loop: this runs millions of times for a large manifest.
        for index, uri in enumerate(uris):
            if (
                type(uri) is not str
                or match(uri) is None
                or dot_segment(uri) is not None
                or not uri.startswith(allowed, 5)
                or (len(uri) > _SHORT_URI and _key_too_long(uri))
            ):
                number = numbers()[index] if numbers else index + 1
                raise ManifestError(f"{unit} {number}: {self._entry_problem(uri)}")
        # A set answers "any repeats?" at C speed; the dict that finds where runs only when there are some.
        if len(set(uris)) != len(uris):
            first_seen: dict[str, int] = {}
            for index, uri in enumerate(uris):
                first = first_seen.setdefault(uri, index)
                if first != index:
                    number = numbers() if numbers else range(1, len(uris) + 1)
                    raise ManifestError(f"{unit} {number[index]} repeats {unit} {number[first]}: {_show(uri)}")
        return tuple(uris)

    def output(self, value: str) -> str:
        location = _location(value, 'field "output"')
        if not self.configured_output_prefixes:
            raise ManifestError('field "output": this deployment accepts no custom output locations')
        if not location.startswith(self.output_prefixes, 5):
            raise ManifestError(
                f'field "output": {_show(location)} is outside the allowed output locations '
                f"[{', '.join(self.configured_output_prefixes)}]"
            )
        return location

    def _entry_problem(self, uri: object) -> str:
        """What is wrong with an entry that failed the combined test in images()."""
        if type(uri) is not str:
            return f"expected an s3:// URI string, got a JSON {_json_type(uri)}"
        if _IMAGE_URI.match(uri) is None or _DOT_SEGMENT.search(uri) is not None:
            return _image_problem(uri)
        if _key_too_long(uri):
            size = len(split_s3_uri(uri)[1].encode("utf-8"))
            return f"{_show(uri)}: the key is {size} bytes, over S3's limit of {MAX_KEY_BYTES}"
        return f"{_show(uri)} is outside the allowed image locations [{', '.join(self.configured_image_prefixes)}]"


def _allowed(prefixes: Sequence[str]) -> tuple[str, ...]:
    # A bare string would be taken letter by letter as one-letter buckets, silently allowing far too much.
    if isinstance(prefixes, str):
        raise TypeError("allowed prefixes must be a sequence of strings, not one string")
    return tuple(p if "/" in p else p + "/" for p in prefixes)


def _text(data: bytes, max_bytes: int) -> str:
    if len(data) > max_bytes:
        raise ManifestError(f"the manifest is larger than {max_bytes} bytes")
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, max_bytes)
    try:
        # utf-8-sig: editors on Windows often start UTF-8 files with a byte-order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"the manifest is not UTF-8 text: invalid byte at offset {exc.start}") from None


def _gunzip(data: bytes, max_bytes: int) -> bytearray:
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            while piece := stream.read(min(_GUNZIP_PIECE, max_bytes + 1 - len(out))):
                out += piece
                if len(out) > max_bytes:
                    raise ManifestError(f"the manifest decompresses to more than {max_bytes} bytes")
    except (OSError, EOFError, zlib.error) as exc:
        raise ManifestError(f"the manifest is not valid gzip: {exc}") from None
    return out


class _NotJson(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, but they are not JSON."""


def _no_constant(name: str):
    raise _NotJson(f"{name} is not a JSON value")


def _key_too_long(uri: str) -> bool:
    # Only called for URIs that passed _IMAGE_URI, so they are valid text without lone surrogates.
    return len(uri.partition("/")[2].partition("/")[2].partition("/")[2].encode("utf-8")) > MAX_KEY_BYTES


def _first_line_is_jsonl(text: str, start: int) -> bool:
    end = text.find("\n", start)
    try:
        obj = json.loads(text[start : end if end >= 0 else len(text)], parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "source-ref" in obj


def _native(obj: dict, source: str, rules: _Rules) -> Manifest:
    unknown = sorted(set(obj) - set(NATIVE_FIELDS))
    if unknown:
        raise ManifestError(
            f'field "{_show(unknown[0])}": not a manifest field (a manifest has only {", ".join(NATIVE_FIELDS)})'
        )
    # null is how many JSON writers spell "not given"; treat it so rather than as a type error.
    model, output, manifest_id = (_optional_string(obj, name) for name in ("model", "output", "id"))
    if model is not None and not _MODEL.match(model):
        raise ManifestError(
            f'field "model": {_show(model)} is not a model name (lowercase letters, digits, "_", "." and "-", '
            'at most 64, starting with a letter or digit, optionally followed by "@version")'
        )
    if output is not None:
        output = rules.output(output)
    if manifest_id is not None and (len(manifest_id) > MAX_ID_CHARS or not manifest_id.isprintable()):
        raise ManifestError(f'field "id": must be at most {MAX_ID_CHARS} printable characters')
    reuse = obj.get("reuse")
    if reuse is not None and not isinstance(reuse, bool):
        raise ManifestError(f'field "reuse": expected true or false, got a JSON {_json_type(reuse)}')
    uris = obj.get("images")
    if uris is None:
        raise ManifestError('the manifest lists no images (it has no "images" field)')
    if not isinstance(uris, list):
        raise ManifestError(f'field "images": expected a list of s3:// URIs, got a JSON {_json_type(uris)}')
    return Manifest(source, "native", rules.images(uris), model, output, manifest_id, reuse is not False)


def _sagemaker(items: list, source: str, rules: _Rules) -> Manifest:
    head = items[0] if items else None
    if not (isinstance(head, dict) and set(head) == {"prefix"} and isinstance(head["prefix"], str)):
        raise ManifestError(
            'a JSON array manifest is a SageMaker manifest: its first element must be {"prefix": "s3://bucket/path/"}'
        )
    prefix = _location(head["prefix"], 'the "prefix" element')
    keys = items[1:]
    for number, key in enumerate(keys, 1):
        if type(key) is not str:
            raise ManifestError(f"entry {number}: expected a key relative to the prefix, got a JSON {_json_type(key)}")
    return Manifest(source, "sagemaker", rules.images([prefix + key for key in keys]), None, None, None)


def _jsonl(text: str, source: str, rules: _Rules) -> Manifest:
    lines = text.split("\n")
    refs = []
    for number, line in enumerate(lines, 1):
        # raw_decode skips json.loads's wrapping, which costs more than the parse of a short line;
        # anything it does not take cleanly (blank lines, leading whitespace, errors) goes the careful way.
        try:
            obj, end = _DECODER.raw_decode(line)
            clean = end == len(line) or line[end:].isspace()
        except (ValueError, RecursionError):
            clean = False
        if not clean:
            if not line or line.isspace():
                continue
            obj = _load_line(line, number)
        if type(obj) is not dict:
            raise ManifestError(
                f'line {number}: expected a JSON object with "source-ref", got a JSON {_json_type(obj)}'
            )
        if "source-ref" not in obj:
            raise ManifestError(f'line {number}: no "source-ref"')
        refs.append(obj["source-ref"])
        # Checked as the lines come, so that a huge file of tiny lines is refused before it fills memory.
        if len(refs) > rules.max_images:
            raise rules.too_many()
    images = rules.images(refs, "line", lambda: [n for n, each in enumerate(lines, 1) if each and not each.isspace()])
    return Manifest(source, "jsonl", images, None, None, None)


def _load_line(line: str, number: int) -> object:
    try:
        return json.loads(line, parse_constant=_no_constant)
    except RecursionError:
        raise ManifestError(f"line {number}: not valid JSON: nested too deeply") from None
    except _NotJson as exc:
        raise ManifestError(f"line {number}: not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"line {number}: not valid JSON: {exc.msg} at column {exc.colno}") from None
    except ValueError as exc:
        raise ManifestError(f"line {number}: not valid JSON: {exc}") from None


def _optional_string(obj: dict, name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise ManifestError(f'field "{name}": expected a string, got a JSON {_json_type(value)}')
    return value


def _location(value: str, what: str) -> str:
    """An s3:// bucket with an optional prefix, normalised to end with "/"."""
    try:
        bucket, key = split_s3_uri(value)
    except ManifestError as exc:
        raise ManifestError(f"{what}: {exc}") from None
    if _BAD_KEY_CHAR.search(key) or _DOT_SEGMENT.search("/" + key):
        raise ManifestError(f"{what}: {_key_problem(value, key)}")
    if len(key) > _SHORT_URI and len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ManifestError(f"{what}: {_show(value)}: the key is longer than S3's limit of {MAX_KEY_BYTES} bytes")
    return f"s3://{bucket}/{key}" if not key or key.endswith("/") else f"s3://{bucket}/{key}/"


def _image_problem(uri: str) -> str:
    """Why an image URI that failed the fast check is not acceptable."""
    try:
        _, key = split_s3_uri(uri)
    except ManifestError as exc:
        return str(exc)
    if not key:
        return f"{_show(uri)} has no key: it names a bucket, not an image"
    if key.endswith("/"):
        return f"{_show(uri)} ends with /: it names a folder, not an image"
    return _key_problem(uri, key)


def _key_problem(uri: str, key: str) -> str:
    """Why a key with a bad character or a "." or ".." segment is not acceptable."""
    bad = _BAD_KEY_CHAR.search(key)
    if bad:
        what = "a backslash" if bad.group() == "\\" else f"the control or invalid character {ascii(bad.group())}"
        return f"{_show(uri)}: the key contains {what}"
    return f'{_show(uri)}: the key contains a "." or ".." path segment'


def _show(value: str) -> str:
    shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
    return shown if shown.isprintable() else repr(shown)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
