"""Analysts' access to the tag tables in S3: load_tags and SQL through DuckDB."""

import uuid
from datetime import UTC, datetime

import pytest

from tagging_platform import layout, tags, warehouse

# What the ImageNet models' cards give these classes (tagging_platform.taxonomy), shortened.
CAT = ["domestic cat", "cat", "feline", "animal"]
PARENTS = {"tabby": CAT, "tiger cat": CAT, "espresso": ["coffee", "beverage", "food"]}


def _rows(partition, labels, model_version="sha256:aaaa"):
    now = datetime.now(UTC)
    return [
        {
            "image": f"s3://images/{partition}/{i}.jpg",
            "position": i,
            "etag": f"e{i}",
            "status": tags.STATUS_OK,
            "error": None,
            "tags": [{"name": n, "confidence": c, "parents": PARENTS.get(n, [])} for n, c in label],
            "top_tag": label[0][0],
            "top_confidence": label[0][1],
            "model_name": "mobilenet_v2",
            "model_version": model_version,
            "manifest": f"s3://manifests/incoming/{partition}.json",
            "partition": partition,
            "chunk": 0,
            "run_id": "run-1",
            "tagged_at": now,
        }
        for i, label in enumerate(labels)
    ]


@pytest.fixture
def two_manifests(s3, settings):
    run = uuid.uuid4().hex[:6]
    first, second = f"wh-{run}-a", f"wh-{run}-b"
    tables = {
        first: _rows(first, [[("tabby", 0.95), ("tiger cat", 0.03)], [("espresso", 0.99)], [("tabby", 0.5)]]),
        second: _rows(
            second, [[("espresso", 0.97)], [("espresso", 0.91), ("customer class", 0.05)]], model_version="sha256:bbbb"
        ),
    }
    for partition, rows in tables.items():
        body = tags.to_parquet_bytes(tags.tag_table(rows))
        s3.put_object(Bucket=settings.warehouse_bucket, Key=layout.asset_table_key("image_tags", partition), Body=body)
    return first, second


def test_load_tags_for_one_manifest_and_one_model(settings, two_manifests):
    first, second = two_manifests
    frame = warehouse.load_tags(manifest=first, settings=settings)
    assert sorted(frame["top_tag"]) == ["espresso", "tabby", "tabby"]
    both = warehouse.load_tags(manifest=[first, second], model="mobilenet_v2@bbbb", settings=settings)
    assert set(both["partition"]) == {second}


def test_sql_over_images_and_over_tags(settings, two_manifests):
    first, second = two_manifests
    top = warehouse.query(
        "SELECT tag, count(*) AS images FROM tag_labels GROUP BY tag ORDER BY images DESC, tag",
        settings=settings,
        manifests=[first],
    ).to_pylist()
    assert top[0] == {"tag": "tabby", "images": 2}
    confident = (
        warehouse.query(
            "SELECT image FROM tag_labels WHERE tag = 'espresso' AND confidence > 0.95 ORDER BY image",
            settings=settings,
            manifests=[first, second],
        )
        .column("image")
        .to_pylist()
    )
    assert confident == [f"s3://images/{first}/1.jpg", f"s3://images/{second}/0.jpg"]
    everything = warehouse.query("SELECT count(*) AS n FROM tags", settings=settings).to_pylist()[0]["n"]
    assert everything >= 5


def test_tags_are_found_by_their_parents(settings, two_manifests):
    first, second = two_manifests
    cats = (
        warehouse.query(
            "SELECT DISTINCT image FROM tag_parents WHERE parent = 'feline' ORDER BY image",
            settings=settings,
            manifests=[first, second],
        )
        .column("image")
        .to_pylist()
    )
    assert cats == [f"s3://images/{first}/0.jpg", f"s3://images/{first}/2.jpg"]
    by_parent = warehouse.query(
        "SELECT parent, count(DISTINCT image) AS images FROM tag_parents WHERE level = 1 "
        "GROUP BY parent ORDER BY parent",
        settings=settings,
        manifests=[first, second],
    ).to_pylist()
    assert by_parent == [{"parent": "coffee", "images": 3}, {"parent": "domestic cat", "images": 2}]
    # The same question of tag_labels' parents column; a tag without parents (a customer's class) has none.
    drinks = warehouse.query(
        "SELECT image, tag, parents FROM tag_labels WHERE list_contains(parents, 'beverage') OR tag = 'customer class' "
        "ORDER BY image, rank",
        settings=settings,
        manifests=[second],
    ).to_pylist()
    assert [(d["tag"], d["parents"]) for d in drinks] == [
        ("espresso", PARENTS["espresso"]),
        ("espresso", PARENTS["espresso"]),
        ("customer class", []),
    ]
    deepest = warehouse.query(
        f"SELECT parent, level FROM tag_parents WHERE image = 's3://images/{first}/0.jpg' AND tag = 'tabby' "
        "ORDER BY level",
        settings=settings,
        manifests=[first],
    ).to_pylist()
    assert [(d["parent"], d["level"]) for d in deepest] == [(p, i) for i, p in enumerate(PARENTS["tabby"], 1)]


def test_the_query_command_prints_a_table_csv_or_json(settings, two_manifests, capsys):
    from tagging_platform.cli import main

    first, _ = two_manifests
    sql = "SELECT tag, count(*) AS images FROM tag_labels GROUP BY tag ORDER BY images DESC, tag"
    assert main(["query", sql, "--manifest", first, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["tag,images", "tabby,2"]
    assert main(["query", sql, "--manifest", first, "--format", "json"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == '{"tag":"tabby","images":2}'
    assert main(["query", "SELECT nonsense FROM nowhere"]) == 2
    assert "error:" in capsys.readouterr().err
