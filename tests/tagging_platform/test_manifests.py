"""Manifest parsing, validation and partition naming."""

import gzip
import io
import json
import re
import tracemalloc
import zlib

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagging_platform import manifests
from tagging_platform.manifests import (
    Manifest,
    ManifestError,
    parse_manifest,
    partition_key_for,
)

ALLOWED = ("images", "photos/2024/")
IMAGES = ["s3://images/a.jpg", "s3://images/sub/b.png", "s3://images/sub/c.jpg"]
FIRST_LINE = b'{"source-ref": "s3://images/a.jpg"}\n'


def parse(data, **kwargs):
    kwargs.setdefault("allowed_image_prefixes", ALLOWED)
    return parse_manifest(data, "s3://manifests/incoming/batch.json", **kwargs)


def native(images, **fields):
    return json.dumps({"images": images, **fields}).encode()


def sagemaker(prefix, keys):
    return json.dumps([{"prefix": prefix}, *keys]).encode()


def jsonl(images, **extra):
    return "\n".join(json.dumps({"source-ref": uri, **extra}) for uri in images).encode()


def rejection(data, **kwargs) -> str:
    with pytest.raises(ManifestError) as info:
        parse(data, **kwargs)
    return str(info.value)


SAME_IMAGES_IN_EACH_FORMAT = {
    "native": native(IMAGES),
    "sagemaker": sagemaker("s3://images/", ["a.jpg", "sub/b.png", "sub/c.jpg"]),
    "jsonl": jsonl(IMAGES),
}


# Formats


@pytest.mark.parametrize("fmt", sorted(SAME_IMAGES_IN_EACH_FORMAT))
def test_each_format_lists_the_same_images_in_order(fmt):
    manifest = parse(SAME_IMAGES_IN_EACH_FORMAT[fmt])
    assert manifest.format == fmt
    assert manifest.images == tuple(IMAGES)
    assert manifest.source == "s3://manifests/incoming/batch.json"


@pytest.mark.parametrize("fmt", sorted(SAME_IMAGES_IN_EACH_FORMAT))
def test_gzipped_manifests_parse_like_plain_ones(fmt):
    data = SAME_IMAGES_IN_EACH_FORMAT[fmt]
    assert parse(gzip.compress(data)) == parse(data)


def test_a_gzip_file_of_several_members_is_read_whole():
    data = jsonl(IMAGES)
    half = data.index(b"\n") + 1
    assert parse(gzip.compress(data[:half]) + gzip.compress(data[half:])).images == tuple(IMAGES)


def test_native_fields_are_kept():
    manifest = parse(
        native(IMAGES, model="resnet50@v2", output="s3://tags/customer-7", id="batch 42"),
        allowed_output_prefixes=["tags"],
    )
    assert (manifest.model, manifest.output, manifest.id) == ("resnet50@v2", "s3://tags/customer-7/", "batch 42")


def test_native_fields_given_as_null_count_as_not_given():
    manifest = parse(native(IMAGES, model=None, output=None, id=None))
    assert (manifest.model, manifest.output, manifest.id) == (None, None, None)


def test_reuse_is_on_unless_a_native_manifest_turns_it_off():
    assert (
        parse(native(IMAGES)).reuse
        and parse(native(IMAGES, reuse=None)).reuse
        and parse(native(IMAGES, reuse=True)).reuse
    )
    assert not parse(native(IMAGES, reuse=False)).reuse
    assert parse(SAME_IMAGES_IN_EACH_FORMAT["jsonl"]).reuse


def test_other_formats_ask_for_no_model_output_or_id():
    for fmt in ("sagemaker", "jsonl"):
        manifest = parse(SAME_IMAGES_IN_EACH_FORMAT[fmt])
        assert (manifest.model, manifest.output, manifest.id) == (None, None, None)


def test_sagemaker_appends_each_key_to_the_prefix_as_a_string():
    manifest = parse(sagemaker("s3://photos/2024/cat_", ["001.jpg", "x/2.jpg"]))
    assert manifest.images == ("s3://photos/2024/cat_001.jpg", "s3://photos/2024/cat_x/2.jpg")


def test_sagemaker_prefix_that_ends_with_a_slash_is_not_doubled():
    assert parse(sagemaker("s3://photos/2024/", ["1.jpg"])).images == ("s3://photos/2024/1.jpg",)


def test_sagemaker_empty_key_makes_the_prefix_itself_the_image():
    # SageMaker's own data-capture manifests name whole objects this way.
    data = sagemaker("s3://photos/2024/a.jpg", [""])
    assert parse(data).images == ("s3://photos/2024/a.jpg",)


def test_sagemaker_image_made_by_concatenation_is_validated_naming_the_entry():
    assert rejection(sagemaker("s3://images", ["a.jpg"])) == (
        "entry 1: s3://imagesa.jpg has no key: it names a bucket, not an image"
    )
    assert rejection(sagemaker("s3://images/sub/", ["a.jpg", ""])) == (
        "entry 2: s3://images/sub/ ends with /: it names a folder, not an image"
    )
    assert rejection(sagemaker("s3://images/a", [".jpg", ".jpg"])) == "entry 2 repeats entry 1: s3://images/a.jpg"


def test_jsonl_skips_blank_lines_and_ignores_other_keys():
    data = (
        b"\n"
        b'{"source-ref": "s3://images/a.jpg", "class": 3, "meta": {"w": 10}}\n'
        b"   \n"
        b'  {"source-ref": "s3://images/sub/b.png"}\r\n'
        b"\n"
        b'{"source-ref": "s3://images/sub/c.jpg", "source-ref-metadata": null}\n'
        b"\n"
    )
    manifest = parse(data)
    assert manifest.format == "jsonl"
    assert manifest.images == tuple(IMAGES)


def test_a_one_line_jsonl_manifest_is_jsonl_not_native():
    manifest = parse(b'\n{"source-ref": "s3://images/a.jpg", "label": "cat"}\n')
    assert (manifest.format, manifest.images) == ("jsonl", ("s3://images/a.jpg",))


def test_a_byte_order_mark_is_accepted():
    assert parse(b"\xef\xbb\xbf" + native(IMAGES)).images == tuple(IMAGES)


_GROUND_TRUTH_LINE = {
    "category": [0, 2],
    "category-metadata": {"class-map": {"0": "cat", "2": "dog"}, "type": "groundtruth/image-classification-multilabel"},
    "annotation-ref": "s3://images/labels/mask.png",
    "source-ref-metadata": {"note": "s3://images/not-an-image.jpg"},
}


@pytest.mark.parametrize(
    "data",
    [
        # SageMaker writes its S3 manifests pretty-printed over many lines.
        json.dumps([{"prefix": "s3://images/"}, "a.jpg", "sub/b.png", "sub/c.jpg"], indent=2).encode(),
        # Ground Truth output: other *-ref attributes and metadata are not images; CRLF, blank lines, a BOM.
        b"\xef\xbb\xbf"
        + b"\r\n".join(json.dumps({"source-ref": uri, **_GROUND_TRUTH_LINE}).encode() for uri in IMAGES)
        + b"\r\n\r\n",
        b"\n\n"
        + b"\n\n".join(json.dumps({"source-ref": uri, **_GROUND_TRUTH_LINE}, indent=None).encode() for uri in IMAGES),
    ],
)
def test_manifests_in_the_shapes_sagemaker_and_ground_truth_write_list_only_their_images(data):
    assert parse(data).images == tuple(IMAGES)


def test_a_sagemaker_manifest_whose_prefix_is_an_object_uri_and_key_empty_lists_that_object():
    data = json.dumps([{"prefix": "s3://images/sub/b.png"}, ""], indent=4).encode()
    assert parse(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n")).images == ("s3://images/sub/b.png",)


def test_a_pretty_printed_one_image_augmented_manifest_is_read():
    data = json.dumps({"source-ref": IMAGES[0], **_GROUND_TRUTH_LINE}, indent=2).encode()
    manifest = parse(data)
    assert (manifest.format, manifest.images) == ("jsonl", (IMAGES[0],))


def test_table_has_image_uri_and_int64_position_in_manifest_order():
    table = parse(native(IMAGES)).table()
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["image_uri", "position"]
    assert pd.api.types.is_string_dtype(table["image_uri"])
    assert table["position"].dtype == "int64"
    assert table["image_uri"].tolist() == IMAGES
    assert table["position"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("fmt", ["native", "sagemaker", "jsonl"])
def test_a_200000_entry_manifest_parses(fmt):
    keys = [f"big/{i:06d}.jpg" for i in range(200_000)]
    uris = ["s3://images/" + key for key in keys]
    if fmt == "native":
        data = native(uris)
    elif fmt == "sagemaker":
        data = sagemaker("s3://images/", keys)
    else:
        data = "\n".join(f'{{"source-ref": "{uri}"}}' for uri in uris).encode()
    manifest = parse(data)
    assert (manifest.format, len(manifest.images)) == (fmt, 200_000)
    assert manifest.images[-1] == "s3://images/big/199999.jpg"


# Rejections: what is wrong, and where


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://images/a.jpg", 'scheme "http" is not accepted'),
        ("https://example.com/a.jpg", 'scheme "https" is not accepted'),
        ("gs://images/a.jpg", 'scheme "gs" is not accepted'),
        ("file:///etc/passwd", 'scheme "file" is not accepted'),
        ("images/a.jpg", "is not an s3:// URI"),
        ("s3:///a.jpg", "has no bucket"),
        ("s3://images", "has no key"),
        ("s3://images/", "has no key"),
        ("s3://images/folder/", "names a folder"),
        ("s3://images/a\\b.jpg", "backslash"),
        ("s3://images/a\x00.jpg", "control"),
        ("s3://images/a\nb.jpg", "control"),
        ("s3://images/a\x7f.jpg", "control"),
        ("s3://images/../secret.jpg", '"." or ".." path segment'),
        ("s3://images/a/./b.jpg", '"." or ".." path segment'),
        ("s3://images/a/..", '"." or ".." path segment'),
        ("s3://bad bucket/a.jpg", "not a valid bucket name"),
    ],
)
def test_bad_image_uris_are_rejected_naming_the_entry_and_the_problem(uri, problem):
    message = rejection(native(["s3://images/ok.jpg", uri]))
    assert message.startswith("entry 2: ")
    assert problem in message


def test_dots_inside_names_are_not_path_segments():
    uris = ["s3://images/a..b.jpg", "s3://images/.hidden/x.jpg", "s3://images/x/...jpg"]
    assert parse(native(uris)).images == tuple(uris)


def test_an_entry_that_is_not_a_string_is_rejected():
    assert rejection(native(["s3://images/a.jpg", 7])) == "entry 2: expected an s3:// URI string, got a JSON number"


def test_an_image_outside_the_allowed_locations_is_rejected_with_the_allowed_list():
    uris = [f"s3://images/{i}.jpg" for i in range(16)] + ["s3://other/x.jpg"]
    assert rejection(native(uris)) == (
        "entry 17: s3://other/x.jpg is outside the allowed image locations [images, photos/2024/]"
    )


def test_a_bare_bucket_allows_that_bucket_only_not_one_that_shares_its_name_as_a_prefix():
    assert parse(native(["s3://images/x.jpg"])).images == ("s3://images/x.jpg",)
    assert "outside the allowed image locations" in rejection(native(["s3://images-other/x.jpg"]))


def test_a_bucket_prefix_allows_only_keys_under_it():
    assert parse(native(["s3://photos/2024/x.jpg"])).images == ("s3://photos/2024/x.jpg",)
    assert "entry 1: s3://photos/2023/x.jpg is outside" in rejection(native(["s3://photos/2023/x.jpg"]))
    assert "outside" in rejection(native(["s3://photos/x.jpg"]))


def test_no_allowed_image_locations_means_no_image_is_accepted():
    assert "outside the allowed image locations []" in rejection(native(IMAGES), allowed_image_prefixes=())


def test_a_single_string_of_allowed_prefixes_is_a_programming_error_not_a_letter_by_letter_allowance():
    with pytest.raises(TypeError):
        parse(native(IMAGES), allowed_image_prefixes="images")


def test_duplicate_images_are_rejected_naming_both_entries():
    uris = [f"s3://images/{i}.jpg" for i in range(8)] + ["s3://images/1.jpg"]
    assert rejection(native(uris)) == "entry 9 repeats entry 2: s3://images/1.jpg"


def test_duplicates_in_a_sagemaker_manifest_name_the_relative_key_positions():
    assert rejection(sagemaker("s3://images/", ["a.jpg", "b.jpg", "a.jpg"])) == (
        "entry 3 repeats entry 1: s3://images/a.jpg"
    )


def test_duplicates_in_jsonl_name_the_lines_counting_blank_ones():
    data = FIRST_LINE + b'\n{"source-ref": "s3://images/b.jpg"}\n\n' + FIRST_LINE
    assert rejection(data) == "line 5 repeats line 1: s3://images/a.jpg"


@pytest.mark.parametrize(
    "data",
    [
        native([]),
        b'{"model": "resnet50"}',
        sagemaker("s3://images/", []),
        b"",
        b"  \n\t ",
        gzip.compress(b""),
    ],
)
def test_a_manifest_without_images_is_rejected(data):
    assert "lists no images" in rejection(data)


@pytest.mark.parametrize("fmt", sorted(SAME_IMAGES_IN_EACH_FORMAT))
def test_more_images_than_the_limit_are_rejected(fmt):
    assert "more than 2 images" in rejection(SAME_IMAGES_IN_EACH_FORMAT[fmt], max_images=2)
    assert len(parse(SAME_IMAGES_IN_EACH_FORMAT[fmt], max_images=3).images) == 3


def test_an_unknown_native_field_is_named_so_a_typo_does_not_pass_silently():
    message = rejection(b'{"imagse": ["s3://images/a.jpg"]}')
    assert message.startswith('field "imagse": not a manifest field')


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"images": "s3://images/a.jpg"}', 'field "images": expected a list of s3:// URIs, got a JSON string'),
        (native(IMAGES, model=3), 'field "model": expected a string, got a JSON number'),
        (native(IMAGES, output=["s3://tags/"]), 'field "output": expected a string, got a JSON array'),
        (native(IMAGES, id={"n": 1}), 'field "id": expected a string, got a JSON object'),
        (native(IMAGES, id="x" * 201), 'field "id": must be at most 200 printable characters'),
        (native(IMAGES, id="tab\there"), 'field "id": must be at most 200 printable characters'),
        (native(IMAGES, reuse="false"), 'field "reuse": expected true or false, got a JSON string'),
        (native(IMAGES, reuse=0), 'field "reuse": expected true or false, got a JSON number'),
    ],
)
def test_native_field_types_are_checked(data, expected):
    assert rejection(data) == expected


def test_an_id_of_200_printable_characters_is_accepted():
    assert parse(native(IMAGES, id="é" * 200)).id == "é" * 200


@pytest.mark.parametrize("model", ["resnet50", "clip-vit_b.32", "0x", "resnet50@v2", "m@sha256:ab12", "a" * 64])
def test_valid_model_names_are_accepted(model):
    assert parse(native(IMAGES, model=model)).model == model


@pytest.mark.parametrize(
    "model", ["", "ResNet", "-resnet", "_x", "a" * 65, "resnet@", "resnet@v 2", "resnet@" + "v" * 101, "a/b", "a@b@c"]
)
def test_invalid_model_names_are_rejected_naming_the_field(model):
    assert rejection(native(IMAGES, model=model)).startswith('field "model": ')


@pytest.mark.parametrize(
    ("output", "normalised"),
    [
        ("s3://tags", "s3://tags/"),
        ("s3://tags/", "s3://tags/"),
        ("s3://tags/customer-7", "s3://tags/customer-7/"),
        ("s3://tags/customer-7/run/", "s3://tags/customer-7/run/"),
    ],
)
def test_output_is_normalised_to_end_with_a_slash(output, normalised):
    assert parse(native(IMAGES, output=output), allowed_output_prefixes=["tags"]).output == normalised


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("s3://tags-other/x", "outside the allowed output locations [tags, shared/customers/]"),
        ("s3://shared/other/", "outside the allowed output locations"),
        ("https://tags/x", 'scheme "https" is not accepted'),
        ("tags/x", "is not an s3:// URI"),
        ("s3://tags/../escape", '"." or ".." path segment'),
        ("s3://tags/a\\b", "backslash"),
        ("s3:///x", "has no bucket"),
    ],
)
def test_output_outside_the_allowed_locations_or_malformed_is_rejected(output, problem):
    message = rejection(native(IMAGES, output=output), allowed_output_prefixes=["tags", "shared/customers/"])
    assert message.startswith('field "output": ')
    assert problem in message


@pytest.mark.parametrize("output", ["s3://shared/customers/7", "s3://shared/customers"])
def test_output_under_an_allowed_prefix_is_accepted(output):
    data = native(IMAGES, output=output)
    assert parse(data, allowed_output_prefixes=["shared/customers/"]).output.startswith("s3://shared/customers/")


def test_output_is_rejected_when_the_deployment_allows_no_custom_output_locations():
    assert rejection(native(IMAGES, output="s3://tags/x")) == (
        'field "output": this deployment accepts no custom output locations'
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'[{"prefix": "s3://images/"}, "a.jpg", 5]', "entry 2: expected a key relative to the prefix, got a JSON"),
        (b'["a.jpg"]', 'first element must be {"prefix": "s3://bucket/path/"}'),
        (b"[]", 'first element must be {"prefix": "s3://bucket/path/"}'),
        (b'[{"prefix": "s3://images/", "extra": 1}, "a.jpg"]', 'first element must be {"prefix"'),
        (b'[{"prefix": "http://images/"}, "a.jpg"]', 'the "prefix" element: http://images/ is not an s3:// URI'),
        (b'[{"prefix": "s3://images/"}, "../x.jpg"]', 'entry 1: s3://images/../x.jpg: the key contains a "." or ".."'),
        (b'[{"prefix": "s3://images/"}, "a.jpg", "sub/"]', "entry 2: s3://images/sub/ ends with /"),
    ],
)
def test_sagemaker_problems_are_rejected_naming_the_entry(data, problem):
    assert problem in rejection(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (FIRST_LINE + b'\n{"source-ref": "s3://images/b.jpg"\n', "line 3: not valid JSON"),
        (FIRST_LINE + b"[1, 2]", 'line 2: expected a JSON object with "source-ref"'),
        (FIRST_LINE + b'{"source_ref": "s3://images/b.jpg"}', 'line 2: no "source-ref"'),
        (FIRST_LINE + b'{"source-ref": 5}', "line 2: expected an s3:// URI string"),
        (FIRST_LINE + b'{"source-ref": "s3://other/b.jpg"}', "line 2: s3://other/b.jpg is outside"),
        (FIRST_LINE + b'{"source-ref": "s3://images/b.jpg"} x', "line 2: not valid JSON"),
        (FIRST_LINE + b'{"source-ref": "s3://images/b.jpg"}{}', "line 2: not valid JSON"),
        (FIRST_LINE + b"[" * 100_000, "line 2: not valid JSON: nested too deeply"),
    ],
)
def test_jsonl_problems_are_rejected_naming_the_line(data, problem):
    assert problem in rejection(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"x": 1}\n' + FIRST_LINE, 'line 1: no "source-ref"'),
        (b'\n\n{"x": 1}\r\n{"x": 2}\n', 'line 3: no "source-ref"'),
        (b"[1, 2]\n" + FIRST_LINE, 'line 1: expected a JSON object with "source-ref", got a JSON array'),
        (b'"s3://images/a.jpg"\n' + FIRST_LINE, 'line 1: expected a JSON object with "source-ref", got a JSON string'),
        (b'{"source-ref": "s3://images/a.jpg"\n' + FIRST_LINE, "line 1: not valid JSON: Expecting ',' delimiter"),
        (b"\xef\xbb\xbf" + b'{"label": 3}\r\n' + FIRST_LINE, 'line 1: no "source-ref"'),
    ],
)
def test_jsonl_whose_first_line_is_bad_is_rejected_naming_that_line(data, problem):
    assert rejection(data).startswith(problem)


def test_a_jsonl_object_split_over_two_lines_is_rejected():
    data = FIRST_LINE + b'{"source-ref":\n "s3://images/b.jpg"}'
    assert rejection(data).startswith("line 2: not valid JSON")


def test_broken_json_reports_the_parsers_line_and_column():
    message = rejection(b'{"images": [\n  "s3://images/a.jpg"\n  "s3://images/b.jpg"\n]}')
    assert message.startswith("not valid JSON: ")
    assert "line 3 column 3" in message


def test_a_native_manifest_with_trailing_garbage_is_not_mistaken_for_jsonl():
    assert rejection(native(IMAGES) + b"\ngarbage").startswith("not valid JSON: Extra data")


@pytest.mark.parametrize("data", [b"hello", b'"s3://images/a.jpg"', b"42", b"null", b"images: [a.jpg]"])
def test_something_that_is_not_a_manifest_is_rejected(data):
    message = rejection(data)
    assert message.startswith("not valid JSON") or "not a JSON" in message


def test_content_that_is_not_utf8_is_rejected():
    assert "not UTF-8" in rejection(b'{"images": ["s3://images/\xff.jpg"]}')


def test_corrupt_or_truncated_gzip_is_rejected():
    compressed = gzip.compress(native(IMAGES))
    assert "not valid gzip" in rejection(compressed[:-10])
    assert "not valid gzip" in rejection(compressed[:12] + bytes(len(compressed) - 12))


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"images": ' + b"[" * 100_000, b"{" + b'"a": {' * 50_000])
def test_deep_nesting_is_rejected_as_a_manifest_error(data):
    assert "not valid JSON" in rejection(data)


def test_gzip_bomb_is_rejected_without_exhausting_memory():
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(200)) + packer.flush()
    assert len(bomb) < 1 << 20  # 200 MB of zeros in well under 1 MB
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError, match="decompresses to more than 1000000 bytes"):
            parse(bomb, max_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20


def test_a_manifest_larger_than_max_bytes_is_rejected_before_it_is_read():
    assert "larger than 10 bytes" in rejection(native(IMAGES), max_bytes=10)


def test_error_messages_show_long_or_unprintable_values_safely():
    message = rejection(native(["s3://other/" + "x" * 10_000]))
    assert len(message) < 400
    assert "\x01" not in rejection(native(["s3://images/a\x01.jpg"]))


# partition_key_for


@pytest.mark.parametrize(
    ("key", "prefix", "expected"),
    [
        ("incoming/batch-42.json", "incoming/", "batch-42"),
        ("incoming/sensor-abc123.json", "incoming/", "sensor-abc123"),
        ("batch_2024.01.json", "", "batch_2024.01"),
    ],
)
def test_partition_key_of_a_plain_json_manifest_is_its_name(key, prefix, expected):
    assert partition_key_for(key, prefix) == expected


@pytest.mark.parametrize(
    ("key", "readable"),
    [
        ("incoming/a b.json", "a-b"),
        ("incoming/customer 7/batch (1).json", "customer-7-batch-1"),
        ("incoming/batch-42.json.gz", "batch-42"),
        ("incoming/batch-42.jsonl", "batch-42"),
        ("incoming/batch-42.manifest", "batch-42"),
        ("incoming/batch-42", "batch-42"),
        ("elsewhere/batch-42.json", "elsewhere-batch-42"),
        ("incoming/.hidden-.json", "hidden"),
        ("incoming/photos-1a2b3c4d.json", "photos-1a2b3c4d"),
    ],
)
def test_partition_key_keeps_a_readable_stem_and_adds_a_hash_when_the_name_alone_would_be_ambiguous(key, readable):
    assert re.fullmatch(re.escape(readable) + r"-[0-9a-f]{8}", partition_key_for(key, "incoming/"))


def test_partition_keys_of_names_that_differ_only_in_unsafe_characters_or_extension_differ():
    keys = ["a b.json", "a-b.json", "a_b.json", "a/b.json", "a-b.jsonl", "a-b.json.gz", "a-b", "a-b.manifest"]
    partitions = [partition_key_for("incoming/" + key, "incoming/") for key in keys]
    assert len(set(partitions)) == len(keys)


def test_a_key_with_no_usable_characters_gets_the_hash_alone():
    assert re.fullmatch(r"[0-9a-f]{8}", partition_key_for("incoming/???.json", "incoming/"))
    assert re.fullmatch(r"[0-9a-f]{8}", partition_key_for("incoming/", "incoming/"))


def test_long_keys_are_cut_to_80_characters_plus_the_hash():
    key = "incoming/" + "x" * 200 + ".json"
    partition = partition_key_for(key, "incoming/")
    assert partition == "x" * 80 + partition[80:]
    assert re.fullmatch(r"-[0-9a-f]{8}", partition[80:])
    assert partition != partition_key_for("incoming/" + "x" * 201 + ".json", "incoming/")


def test_partition_key_is_deterministic():
    assert partition_key_for("incoming/a b.json", "incoming/") == partition_key_for("incoming/a b.json", "incoming/")


# Properties

_SEGMENT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\"), min_size=1, max_size=8
).filter(lambda s: s not in (".", ".."))
_KEY = st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_KEY, min_size=1, max_size=12, unique=True), st.booleans())
def test_any_valid_unique_keys_read_the_same_in_all_three_formats(keys, compressed):
    uris = ["s3://photos/2024/" + key for key in keys]
    encodings = [
        json.dumps({"images": uris}).encode(),
        json.dumps([{"prefix": "s3://photos/2024/"}, *keys]).encode(),
        "\n".join(json.dumps({"source-ref": uri}, ensure_ascii=False) for uri in uris).encode(),
    ]
    for data in encodings:
        manifest = parse(gzip.compress(data) if compressed else data)
        assert manifest.images == tuple(uris)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=30), st.lists(st.text(max_size=12), max_size=6))
def test_a_sagemaker_manifest_lists_prefix_plus_key_or_is_refused_as_those_uris_would_be(tail, keys):
    """SageMaker's rule: image = prefix + key, as strings, and nothing else (no "/" inserted, none removed)."""
    prefix = "s3://photos/" + tail
    uris = [prefix + key for key in keys]
    try:
        expected = parse(native(uris)).images
    except ManifestError as exc:
        expected = exc
    try:
        images = parse(sagemaker(prefix, keys)).images
    except ManifestError as exc:
        # The same URI list is refused with the same message, unless the prefix alone is already refused.
        assert isinstance(expected, ManifestError) or str(exc).startswith('the "prefix" element: ')
        if not str(exc).startswith('the "prefix" element: '):
            assert str(exc) == str(expected)
        return
    assert images == expected == tuple(uris)


_LINE_EXTRAS = st.dictionaries(st.sampled_from(["class", "label-ref", "x", "source_ref"]), st.integers(), max_size=2)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(_LINE_EXTRAS, min_size=2, max_size=8),
    st.data(),
    st.sampled_from(["\n", "\r\n", "\n\n"]),
    st.booleans(),
)
def test_the_first_jsonl_line_without_source_ref_is_named_wherever_it_is(extras, data, newline, bom):
    """Format detection never decides on the first line alone: a JSON Lines file is read as one."""
    bad = data.draw(st.integers(0, len(extras) - 1))
    lines = [
        json.dumps(extra if index == bad else {"source-ref": f"s3://images/{index}.jpg", **extra})
        for index, extra in enumerate(extras)
    ]
    text = ("\ufeff" if bom else "") + newline.join(lines) + newline
    line_number = bad * newline.count("\n") + 1
    assert rejection(text.encode()) == f'line {line_number}: no "source-ref"'


def _outcome(data: bytes):
    try:
        return parse(data, allowed_output_prefixes=["tags"])
    except ManifestError as exc:
        assert str(exc)
        return exc


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_manifest_or_a_manifest_error(data):
    assert isinstance(_outcome(data), (Manifest, ManifestError))
    assert isinstance(_outcome(b"\x1f\x8b" + data), (Manifest, ManifestError))


_STRINGS = st.sampled_from(
    ["s3://images/a.jpg", "s3://images/b.jpg", "s3://tags/x", "s3://images/", "a.jpg", "http://x/y", "resnet50"]
) | st.text(max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _STRINGS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(["images", "model", "output", "id", "source-ref", "prefix"]) | st.text(max_size=5),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_JSON, min_size=1, max_size=4), st.sampled_from(["value", "lines", "gzip"]))
def test_arbitrary_json_values_give_a_manifest_or_a_manifest_error(values, encoding):
    if encoding == "lines":
        data = "\n".join(json.dumps(value) for value in values).encode()
    else:
        data = json.dumps(values[0]).encode()
    if encoding == "gzip":
        data = gzip.compress(data)
    assert isinstance(_outcome(data), (Manifest, ManifestError))


_MANIFEST_KEY = st.tuples(
    st.sampled_from(["", "incoming/", "elsewhere/"]),
    st.text(st.sampled_from("ab1f-_. /é?x"), max_size=100),
    st.sampled_from(["", ".json", ".jsonl", ".manifest", ".json.gz", ".gz", ".JSON"]),
).map("".join)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_MANIFEST_KEY, min_size=1, max_size=20, unique=True))
def test_partition_keys_are_safe_bounded_and_distinct(keys):
    partitions = [partition_key_for(key, "incoming/") for key in keys]
    for partition in partitions:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", partition)
        assert not partition.startswith("-") and not partition.endswith("-")
        assert len(partition) <= 89
    assert len(set(partitions)) == len(keys)


# Reading a stream a piece at a time


def _stream_pieces_of(monkeypatch, size):
    monkeypatch.setattr(manifests, "_PIECE", size)


@pytest.mark.parametrize("fmt", sorted(SAME_IMAGES_IN_EACH_FORMAT))
@pytest.mark.parametrize("compressed", [False, True])
def test_a_stream_parses_like_the_same_bytes(fmt, compressed):
    data = SAME_IMAGES_IN_EACH_FORMAT[fmt]
    data = gzip.compress(data) if compressed else data
    assert parse(io.BytesIO(data)) == parse(data)


def test_jsonl_read_in_pieces_smaller_than_a_line_lists_the_same_images_and_lines(monkeypatch):
    uris = [f"s3://images/{i:03d}/é.jpg" for i in range(300)]
    data = b"\xef\xbb\xbf" + "\n".join(json.dumps({"source-ref": u}, ensure_ascii=False) for u in uris).encode() + b"\n"
    whole = parse(data)
    _stream_pieces_of(monkeypatch, 7)
    assert parse(io.BytesIO(data)) == whole
    assert parse(io.BytesIO(gzip.compress(data))) == whole
    assert whole.images == tuple(uris)


@pytest.mark.parametrize("piece", [8, 64, 1 << 22])
def test_jsonl_problems_name_the_same_line_whatever_the_piece_size(monkeypatch, piece):
    _stream_pieces_of(monkeypatch, piece)
    ok = [json.dumps({"source-ref": f"s3://images/{i}.jpg"}).encode() for i in range(40)]
    blank_then_repeat = b"\n".join([*ok, b"", b"  ", ok[3]])
    assert rejection(io.BytesIO(blank_then_repeat)) == "line 43 repeats line 4: s3://images/3.jpg"
    bad_line = b"\n".join([*ok[:30], b"{oops", *ok[30:]])
    assert rejection(io.BytesIO(bad_line)).startswith("line 31: not valid JSON")
    latin1 = b"\n".join([*ok, b'{"source-ref": "s3://images/\xe9.jpg"}'])
    assert rejection(io.BytesIO(latin1)) == f"the manifest is not UTF-8 text: invalid byte at offset {len(latin1) - 7}"


def test_jsonl_problems_are_reported_in_the_order_of_a_manifest_read_whole(monkeypatch):
    """A bad image, then a broken line, then broken gzip: the gzip error wins, then the line, as before."""
    _stream_pieces_of(monkeypatch, 64)
    lines = [FIRST_LINE.strip(), b'{"source-ref": "s3://other/x.jpg"}', *[b'{"source-ref": "s3://images/b.jpg"}'] * 3]
    outside_then_unreadable = b"\n".join([*lines, b"[1, 2]"])
    assert rejection(outside_then_unreadable) == 'line 6: expected a JSON object with "source-ref", got a JSON array'
    assert rejection(io.BytesIO(gzip.compress(outside_then_unreadable)[:-10])).startswith(
        "the manifest is not valid gzip"
    )
    assert rejection(io.BytesIO(b"\n".join(lines))) == (
        "line 2: s3://other/x.jpg is outside the allowed image locations [images, photos/2024/]"
    )


def test_a_stream_larger_than_max_bytes_is_rejected_while_it_is_read():
    assert "larger than 100 bytes" in rejection(io.BytesIO(jsonl(IMAGES * 10)), max_bytes=100)


def test_repeats_are_confirmed_string_by_string_when_hashes_collide(monkeypatch):
    monkeypatch.setattr(manifests, "hash", lambda uri: 7, raising=False)
    assert parse(native(IMAGES)).images == tuple(IMAGES)
    assert rejection(native([*IMAGES, IMAGES[1]])) == "entry 4 repeats entry 2: s3://images/sub/b.png"
    assert rejection(jsonl([*IMAGES, IMAGES[2]])) == "line 4 repeats line 3: s3://images/sub/c.jpg"


def test_the_table_keeps_the_arrow_column_without_copying_it_into_python_strings():
    manifest = parse(jsonl(IMAGES))
    column = manifest.table()["image_uri"]
    assert column.dtype == pd.Series([], dtype=str).dtype
    [table_chunk], [manifest_chunk] = column.array._pa_array.chunks, manifest.image_uris.chunks
    assert [buffer.address for buffer in table_chunk.buffers()[1:]] == [
        buffer.address for buffer in manifest_chunk.buffers()[1:]
    ]
