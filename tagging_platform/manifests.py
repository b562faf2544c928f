"""Customer manifests: reading the three accepted formats, validating every entry, and naming batches."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import re
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa

from tagging_platform.s3 import BUCKET_PATTERN, S3UriError, split_uri
from tagging_platform.s3 import shown as _show
from tagging_platform.settings import PUBLISH_FORMATS, allowed_location

NATIVE_FIELDS = ("images", "model", "output", "id", "reuse", "output_format", "max_labels", "min_confidence")
MAX_ID_CHARS = 200
MAX_PARTITION_NAME = 80

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = codecs.BOM_UTF8
# Reading in pieces bounds the memory a gzip bomb can claim to max_bytes plus one piece, and what a
# JSON Lines manifest holds besides its image column to about one piece of text.
_PIECE = 1 << 22
# Images validated and added to the Arrow column at a time, from a manifest parsed whole.
_BATCH = 1 << 16

# Cc control characters, and lone surrogates (they cannot be encoded for S3); backslashes are
# rejected too because some S3 clients and tools treat them as path separators.
_BAD_KEY_CHARS = r"\x00-\x1f\x7f-\x9f\ud800-\udfff\\"
# The common case, a valid image URI, costs one match plus one search; the slower diagnosis in
# _image_problem runs only for an entry that is about to be rejected.
_IMAGE_URI = re.compile(rf"s3://{BUCKET_PATTERN}/[^{_BAD_KEY_CHARS}]*[^{_BAD_KEY_CHARS}/]\Z")
_BAD_KEY_CHAR = re.compile(rf"[{_BAD_KEY_CHARS}]")
# "." and ".." segments, literal or percent-encoded ("%2e%2e"): a proxy or SDK that decodes the key would climb.
_DOT_SEGMENT = re.compile(r"/(?:\.|%2[eE])(?:\.|%2[eE])?(?=/|\Z)")
_WHOLE_DOT_SEGMENT = re.compile(r"/(?:\.|%2[eE])(?:\.|%2[eE])?/")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_SPACE_BYTES = re.compile(rb"[ \t\n\r]*")
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
    # One Arrow column rather than a tuple of str: a Python string per image would dominate the memory.
    image_uris: pa.ChunkedArray
    model: str | None
    output: str | None
    id: str | None
    # Whether images already tagged by the same model version (same ETag) take their earlier tags.
    reuse: bool = True
    # How the batch's tags are published (None: the deployment's TP_PUBLISH_FORMAT), and for "rekognition"
    # DetectLabels' MaxLabels and MinConfidence (0-100).
    output_format: str | None = None
    max_labels: int | None = None
    min_confidence: float | None = None

    @property
    def images(self) -> tuple[str, ...]:
        """The image URIs as Python strings, made on each call: for a large manifest, use table()."""
        return tuple(self.image_uris.to_pylist())

    def table(self) -> pd.DataFrame:
        """One row per image: image_uri and its 0-based position in the manifest."""
        return pd.DataFrame(
            {
                "image_uri": self.image_uris.to_pandas(types_mapper={pa.large_string(): _URI_DTYPE}.get),
                "position": pd.Series(range(len(self.image_uris)), dtype="int64"),
            }
        )


# pandas' own str dtype, whose Arrow type is large_string: the column becomes the table's without a copy.
_URI_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)


def parse_manifest(
    data: bytes | BinaryIO,
    source: str,
    *,
    allowed_image_prefixes: Sequence[str],
    allowed_output_prefixes: Sequence[str] = (),
    max_images: int = 10_000_000,
    max_bytes: int = 2_000_000_000,
) -> Manifest:
    """Read a manifest in any accepted format (gzipped or not); raise ManifestError for anything unacceptable.

    `data` is the manifest's bytes or a binary stream (a file, an S3 response body): JSON Lines is
    read from a stream a piece at a time, so that memory follows the image column, not the file.
    """
    rules = _Rules(
        _allowed(allowed_image_prefixes),
        allowed_image_prefixes,
        _allowed(allowed_output_prefixes),
        allowed_output_prefixes,
        max_images,
    )
    content = _Content(data, max_bytes)
    pieces = content.pieces()
    first = next(pieces, b"")
    # A byte-order mark is dropped as utf-8-sig drops it, and offsets in messages count from after it.
    head = first.removeprefix(_BOM)
    if _starts_as_jsonl(head):
        return _jsonl(_text_pieces(head, pieces), source, rules)
    del head
    text = _text(content.whole if content.whole is not None else _joined(first, pieces))
    del first
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
        if not _looks_like_jsonl(text, start):
            raise ManifestError(f"not valid JSON: {exc}") from None
        return _jsonl([text], source, rules)
    first_line = text.count("\n", 0, start) + 1
    # The parsed value holds its own copy of every string; the text is not needed any more.
    del text
    if isinstance(whole, dict):
        if "source-ref" in whole and "images" not in whole:
            column = _ImageColumn(rules, "line", lambda index: first_line)
            column.add([whole["source-ref"]])
            return Manifest(source, "jsonl", column.finish(), None, None, None)
        return _native(whole, source, rules)
    if isinstance(whole, list):
        return _sagemaker(whole, source, rules)
    raise ManifestError(f"a manifest is a JSON object, a JSON array or JSON Lines, not a JSON {_json_type(whole)}")


def partition_key_for(manifest_key: str, prefix: str = "") -> str:
    """A Dagster-safe, readable partition key for a manifest's S3 key; different keys get different partitions.

    "incoming/batch-42.json" under prefix "incoming/" is simply "batch-42". Any other shape keeps a
    readable stem and gains "-" and 8 hex digits of the key's SHA-256, which is what keeps
    "a b.json" apart from "a-b.json", and "a.jsonl" or "a.json.gz" apart from "a.json".
    """
    stem = manifest_key.removeprefix(prefix)
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

    def check(self, uris: list, first: int, unit: str, number: Callable[[int], int]) -> None:
        """Check image URIs, the `first`-th of the manifest onwards; `number` gives an image's entry or line number."""
        match, dot_segment, allowed = _IMAGE_URI.match, _DOT_SEGMENT.search, self.image_prefixes
        # One combined test per entry in a tight loop: this runs millions of times for a large manifest.
        for index, uri in enumerate(uris, first):
            if (
                type(uri) is not str
                or match(uri) is None
                or dot_segment(uri) is not None
                or not uri.startswith(allowed, 5)
                or (len(uri) > _SHORT_URI and _key_too_long(uri))
            ):
                raise ManifestError(f"{unit} {number(index)}: {self._entry_problem(uri)}")

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
            size = len(split_uri(uri)[1].encode("utf-8"))
            return f"{_show(uri)}: the key is {size} bytes, over S3's limit of {MAX_KEY_BYTES}"
        return f"{_show(uri)} is outside the allowed image locations [{', '.join(self.configured_image_prefixes)}]"


def _allowed(prefixes: Sequence[str]) -> tuple[str, ...]:
    # A bare string would be taken letter by letter as one-letter buckets, silently allowing far too much.
    if isinstance(prefixes, str):
        raise TypeError("allowed prefixes must be a sequence of strings, not one string")
    return tuple(entry if entry.endswith("/") else entry + "/" for entry in map(allowed_location, prefixes))


class _ImageColumn:
    """Validated image URIs gathered a batch at a time into an Arrow column.

    Repeats are found from a 64-bit hash per image, sorted, rather than a set of millions of Python
    strings; only the images whose hashes collide are compared as strings.
    """

    def __init__(self, rules: _Rules, unit: str, number: Callable[[int], int] = lambda index: index + 1) -> None:
        self.rules, self.unit, self.number = rules, unit, number
        self.chunks: list[pa.Array] = []
        self.hashes: list[np.ndarray] = []
        self.count = 0

    def add(self, uris: list) -> None:
        self.rules.check(uris, self.count, self.unit, self.number)
        self.hashes.append(np.fromiter(map(hash, uris), np.int64, len(uris)))
        self.chunks.append(_string_array(uris))
        self.count += len(uris)

    def finish(self) -> pa.ChunkedArray:
        if not self.count:
            raise ManifestError("the manifest lists no images")
        column = pa.chunked_array(self.chunks, pa.large_string())
        hashes = np.concatenate(self.hashes)
        self.chunks, self.hashes = [], []
        hashes.sort()
        repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        del hashes
        if len(repeated):
            self._raise_first_repeat(column, repeated)
        return column

    def _raise_first_repeat(self, column: pa.ChunkedArray, repeated: np.ndarray) -> None:
        """Name the first image that repeats an earlier one, if any; equal hashes alone may be a collision."""
        first_seen: dict[str, int] = {}
        start = 0
        for chunk in column.chunks:
            uris = chunk.to_pylist()
            hashes = np.fromiter(map(hash, uris), np.int64, len(uris))
            for offset in np.flatnonzero(np.isin(hashes, repeated)).tolist():
                index = start + offset
                first = first_seen.setdefault(uris[offset], index)
                if first != index:
                    unit = self.unit
                    raise ManifestError(
                        f"{unit} {self.number(index)} repeats {unit} {self.number(first)}: {_show(uris[offset])}"
                    )
            start += len(uris)


def _string_array(uris: list[str]) -> pa.Array:
    """An Arrow large_string array in buffers of exactly its size: pa.array's growing buffers keep their slack."""
    joined = "".join(uris)
    data = joined.encode("utf-8")
    # For ASCII text, characters are bytes; otherwise each string's length in UTF-8 is needed.
    lengths = map(len, uris) if joined.isascii() else (len(uri.encode("utf-8")) for uri in uris)
    del joined
    offsets = np.zeros(len(uris) + 1, np.int64)
    np.cumsum(np.fromiter(lengths, np.int64, len(uris)), out=offsets[1:])
    return pa.Array.from_buffers(pa.large_string(), len(uris), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


class _Content:
    """A manifest's bytes as they are read: gunzipped when they are gzip, and never more than max_bytes."""

    def __init__(self, data: bytes | BinaryIO, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # The caller's bytes themselves when they need no gunzipping, so that reading them whole copies nothing.
        self.whole: bytes | None = None
        if isinstance(data, (bytes, bytearray)):
            if len(data) > max_bytes:
                raise ManifestError(f"the manifest is larger than {max_bytes} bytes")
            stream = io.BytesIO(data)
        else:
            stream = data
        magic = stream.read(len(_GZIP_MAGIC))
        self.gzip = magic == _GZIP_MAGIC
        stream = _Unread(magic, stream)
        if self.gzip:
            stream = gzip.GzipFile(fileobj=stream)
        elif isinstance(data, (bytes, bytearray)):
            self.whole = data
        self.stream = stream

    def pieces(self) -> Iterator[bytes]:
        """The content in pieces of at most _PIECE bytes; a ManifestError when it is too large or broken gzip."""
        read = 0
        try:
            while piece := self.stream.read(min(_PIECE, self.max_bytes + 1 - read)):
                read += len(piece)
                if read > self.max_bytes:
                    if self.gzip:
                        raise ManifestError(f"the manifest decompresses to more than {self.max_bytes} bytes")
                    raise ManifestError(f"the manifest is larger than {self.max_bytes} bytes")
                yield piece
        except (OSError, EOFError, zlib.error) as exc:
            if not self.gzip:
                raise
            raise ManifestError(f"the manifest is not valid gzip: {exc}") from None


class _Unread:
    """A stream with the bytes already read from it (to look for gzip's magic number) put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        head, self.head = self.head, b""
        if size < 0:
            return head + self.stream.read()
        return head + self.stream.read(size - len(head)) if size > len(head) else head


def _joined(first: bytes, pieces: Iterator[bytes]) -> bytearray:
    whole = bytearray(first)
    for piece in pieces:
        whole += piece
    return whole


def _text(data: bytes | bytearray) -> str:
    try:
        # utf-8-sig: editors on Windows often start UTF-8 files with a byte-order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"the manifest is not UTF-8 text: invalid byte at offset {exc.start}") from None


def _starts_as_jsonl(head: bytes) -> bool:
    """Whether the content's first piece starts with a whole JSON Lines line; when unsure, it is read whole."""
    start = _JSON_SPACE_BYTES.match(head).end()
    end = head.find(b"\n", start)
    if not head.startswith(b"{", start) or end < 0:
        return False
    try:
        obj = json.loads(head[start:end].decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return False
    # One line with "images" as well is a native manifest when it is the whole file; the whole read decides.
    return isinstance(obj, dict) and "source-ref" in obj and "images" not in obj


def _text_pieces(first: bytes, pieces: Iterator[bytes]) -> Iterator[str]:
    """The content as text, in pieces that end at a line's end (the last one may not).

    A UTF-8 error is raised only once the rest has been read: a broken gzip stream later on is
    reported first, as when the whole manifest was decompressed before it was decoded.
    """
    pending = bytearray(first)
    offset = 0  # of pending in the content (after any byte-order mark)
    for piece in pieces:
        pending += piece
        end = pending.rfind(b"\n") + 1
        if end:
            yield _decoded(pending, end, offset, pieces)
            del pending[:end]
            offset += end
    if pending:
        yield _decoded(pending, len(pending), offset, pieces)


def _decoded(pending: bytearray, end: int, offset: int, rest: Iterator[bytes]) -> str:
    with memoryview(pending) as view:
        try:
            return codecs.utf_8_decode(view[:end], "strict", True)[0]
        except UnicodeDecodeError as exc:
            error = ManifestError(f"the manifest is not UTF-8 text: invalid byte at offset {offset + exc.start}")
    for _ in rest:
        pass
    raise error


class _NotJson(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, but they are not JSON."""


def _no_constant(name: str):
    raise _NotJson(f"{name} is not a JSON value")


def _key_too_long(uri: str) -> bool:
    # Only called for URIs that passed _IMAGE_URI, so they are valid text without lone surrogates.
    return len(uri.partition("/")[2].partition("/")[2].partition("/")[2].encode("utf-8")) > MAX_KEY_BYTES


def _looks_like_jsonl(text: str, start: int) -> bool:
    """Whether text that is not one JSON value is meant as JSON Lines, so that its errors name a line.

    It is when its first line or the next non-blank one is an object with "source-ref", or when its
    first line is a whole object (one without "images": that is a native manifest with something
    after it) and another line follows.
    """
    lines = list(_first_lines(text, start, 2))
    objects = [_line_object(line) for line in lines]
    if any(obj is not None and "source-ref" in obj for obj in objects):
        return True
    return len(lines) == 2 and objects[0] is not None and "images" not in objects[0]


def _first_lines(text: str, start: int, count: int) -> Iterator[str]:
    """The first `count` non-blank lines from `start`, without copying the rest of a large text."""
    while count and start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end]
        if line.strip():
            count -= 1
            yield line
        start = end + 1


def _line_object(line: str) -> dict | None:
    try:
        obj = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


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
    publishing = _publishing_fields(obj)
    return Manifest(source, "native", _column(uris, rules), model, output, manifest_id, reuse is not False, *publishing)


def _publishing_fields(obj: dict) -> tuple[str | None, int | None, float | None]:
    """output_format, max_labels and min_confidence, with DetectLabels' meanings for the last two."""
    output_format = _optional_string(obj, "output_format")
    if output_format is not None and output_format not in PUBLISH_FORMATS:
        raise ManifestError(f'field "output_format": {_show(output_format)} is not one of {", ".join(PUBLISH_FORMATS)}')
    max_labels = obj.get("max_labels")
    if max_labels is not None and (type(max_labels) is not int or max_labels < 0):
        raise ManifestError('field "max_labels": expected a whole number of labels, 0 or more')
    min_confidence = obj.get("min_confidence")
    if min_confidence is not None and (type(min_confidence) not in (int, float) or not 0 <= min_confidence <= 100):
        raise ManifestError(
            'field "min_confidence": expected a number from 0 to 100 (a percentage, as in DetectLabels)'
        )
    return output_format, max_labels, None if min_confidence is None else float(min_confidence)


def _sagemaker(items: list, source: str, rules: _Rules) -> Manifest:
    head = items[0] if items else None
    if not (isinstance(head, dict) and set(head) == {"prefix"} and isinstance(head["prefix"], str)):
        raise ManifestError(
            'a JSON array manifest is a SageMaker manifest: its first element must be {"prefix": "s3://bucket/path/"}'
        )
    prefix = _sagemaker_prefix(head["prefix"])
    for number, key in enumerate(items[1:], 1):
        if type(key) is not str:
            raise ManifestError(f"entry {number}: expected a key relative to the prefix, got a JSON {_json_type(key)}")
    keys = len(items) - 1
    if keys > rules.max_images:
        raise rules.too_many()
    column = _ImageColumn(rules, "entry")
    for start in range(1, keys + 1, _BATCH):
        stop = min(start + _BATCH, keys + 1)
        uris = [prefix + key for key in items[start:stop]]
        # Each key is dropped as soon as its URI is made, so that keys and URIs are never all held at once.
        items[start:stop] = [None] * (stop - start)
        column.add(uris)
    return Manifest(source, "sagemaker", column.finish(), None, None, None)


def _sagemaker_prefix(prefix: str) -> str:
    """The prefix as given: SageMaker appends each key to it as a string, so it need not end with "/".

    Only what would spoil every image is refused here, naming the prefix; the URIs it makes are
    checked one by one like any other image URI.
    """
    # Only a whole "." or ".." segment, one that a "/" ends: "s3://b/a." + "x.jpg" is a plain name.
    _checked_location(prefix, 'the "prefix" element', _WHOLE_DOT_SEGMENT)
    return prefix


def _column(uris: list, rules: _Rules) -> pa.ChunkedArray:
    if len(uris) > rules.max_images:
        raise rules.too_many()
    column = _ImageColumn(rules, "entry")
    for start in range(0, len(uris), _BATCH):
        batch = uris[start : start + _BATCH]
        # Each string is dropped once it is in the column, so that the two are never both whole.
        uris[start : start + _BATCH] = [None] * len(batch)
        column.add(batch)
    return column.finish()


def _jsonl(pieces: Iterable[str], source: str, rules: _Rules) -> Manifest:
    """JSON Lines from text in pieces that end at a line's end, each piece's images added to the column as it comes.

    The first problem found does not end the reading: a broken gzip stream or invalid UTF-8 later in
    the file, then a line that is not JSON, then a bad image, is the order in which a manifest read
    whole reports them, and so is the order here.
    """
    blank_lines = _BlankLines()
    column = _ImageColumn(rules, "line", blank_lines.line_of)
    lines_read = 0
    images = 0
    unreadable: ManifestError | None = None
    bad_image: ManifestError | None = None
    for piece in pieces:
        if unreadable:
            continue
        lines = piece.split("\n")
        if piece.endswith("\n"):
            lines.pop()
        refs: list = []
        try:
            _read_lines(lines, lines_read, refs, images, blank_lines, rules)
        except ManifestError as exc:
            unreadable = exc
            continue
        lines_read += len(lines)
        images += len(refs)
        if not bad_image:
            try:
                column.add(refs)
            except ManifestError as exc:
                bad_image = exc
    if unreadable or bad_image:
        raise unreadable or bad_image
    return Manifest(source, "jsonl", column.finish(), None, None, None)


def _read_lines(
    lines: list[str], lines_before: int, refs: list, images_before: int, blank_lines: _BlankLines, rules: _Rules
) -> None:
    """Append each line's "source-ref" to refs; raise ManifestError for a line that has none."""
    room = rules.max_images - images_before
    for number, line in enumerate(lines, lines_before + 1):
        # raw_decode skips json.loads's wrapping, which costs more than the parse of a short line;
        # anything it does not take cleanly (blank lines, leading whitespace, errors) goes the careful way.
        try:
            obj, end = _DECODER.raw_decode(line)
            clean = end == len(line) or line[end:].isspace()
        except (ValueError, RecursionError):
            clean = False
        if not clean:
            if not line or line.isspace():
                blank_lines.skipped(images_before + len(refs))
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
        if len(refs) > room:
            raise rules.too_many()


class _BlankLines:
    """Where blank lines shift a JSON Lines manifest's images off line = position + 1, for messages only."""

    def __init__(self) -> None:
        self.before_image = array("q")  # the image each run of blank lines comes before, ascending
        self.total = array("q")  # blank lines up to and including that run

    def skipped(self, next_image: int) -> None:
        if self.before_image and self.before_image[-1] == next_image:
            self.total[-1] += 1
        else:
            self.before_image.append(next_image)
            self.total.append((self.total[-1] if self.total else 0) + 1)

    def line_of(self, index: int) -> int:
        runs = bisect_right(self.before_image, index)
        return index + 1 + (self.total[runs - 1] if runs else 0)


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
    bucket, key = _checked_location(value, what, _DOT_SEGMENT)
    return f"s3://{bucket}/{key}" if not key or key.endswith("/") else f"s3://{bucket}/{key}/"


def _checked_location(value: str, what: str, dot_segment: re.Pattern) -> tuple[str, str]:
    """(bucket, key) of an s3:// location, or the ManifestError naming `what` and its problem."""
    try:
        bucket, key = split_uri(value)
    except S3UriError as exc:
        raise ManifestError(f"{what}: {exc}") from None
    if _BAD_KEY_CHAR.search(key) or dot_segment.search("/" + key):
        raise ManifestError(f"{what}: {_key_problem(value, key)}")
    if len(key) > _SHORT_URI and len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ManifestError(f"{what}: {_show(value)}: the key is longer than S3's limit of {MAX_KEY_BYTES} bytes")
    return bucket, key


def _image_problem(uri: str) -> str:
    """Why an image URI that failed the fast check is not acceptable."""
    try:
        _, key = split_uri(uri)
    except S3UriError as exc:
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
        what = "a backslash" if bad.group() == "\\" else f"the control or invalid character {bad.group()!a}"
        return f"{_show(uri)}: the key contains {what}"
    return f'{_show(uri)}: the key contains a "." or ".." path segment (literal or percent-encoded)'


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
