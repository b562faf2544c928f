"""Customers and API keys in the embedded S3 server: hashed at rest, one per customer, rotation, prefixes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tagging_platform.api.keys import CustomerError, CustomerStore, hash_key
from tests.conftest import REPO


@pytest.fixture
def store(s3, settings):
    return CustomerStore(s3, settings)


def test_a_key_authenticates_its_customer_and_only_its_hash_is_stored(store, s3, settings):
    key, customer = store.create("hooli", ["s3://tags/hooli/", "s3://tags/shared/hooli"], rotate=True)
    assert key.startswith("tp_hooli_") and len(key) > 40
    assert customer.output_prefixes == ("s3://tags/hooli/", "s3://tags/shared/hooli/")
    record = json.loads(
        s3.get_object(Bucket=settings.warehouse_bucket, Key="api/customers/hooli/customer.json")["Body"].read()
    )
    assert record["key_sha256"] == hash_key(key) and key not in json.dumps(record)
    assert store.authenticate(key) == customer
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.authenticate("tp_other_" + key.split("_", 2)[2]) is None


def test_one_key_per_customer_rotation_replaces_it(store):
    old, _ = store.create("pied-piper", rotate=True)
    with pytest.raises(CustomerError, match="already has a key"):
        store.create("pied-piper")
    new, customer = store.create("pied-piper", rotate=True)
    assert customer.output_prefixes == ("s3://tags/pied-piper/",)  # the default: the output bucket, by name
    assert store.authenticate(new) is not None
    assert store.authenticate(old) is None


@pytest.mark.parametrize(
    ("name", "outputs", "images", "message"),
    [
        ("Bad_Name", (), (), "customer name"),
        ("ok", ("s3://warehouse/ok/",), (), "outside this deployment's allowed locations"),
        ("ok", ("https://x/",), (), "not an s3:// URI"),
        ("ok", ("s3://tags/ok/../other/",), (), "'..'"),
        ("ok", (), ("s3://elsewhere/",), "outside this deployment's allowed locations"),
    ],
)
def test_what_cannot_be_created(store, name, outputs, images, message):
    with pytest.raises(CustomerError, match=message):
        store.create(name, outputs, images, rotate=True)


def test_output_prefixes_do_not_leak_into_siblings(store):
    _, customer = store.create("acme2", ["s3://tags/acme2"], rotate=True)
    assert customer.may_write("s3://tags/acme2/") and customer.may_write("s3://tags/acme2/sub/")
    assert not customer.may_write("s3://tags/acme2-evil/") and not customer.may_write("s3://tags/")


def test_the_command_prints_the_key_once(embedded_s3, settings, store):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tagging_platform.cli",
            "api-key",
            "create",
            "umbrella",
            "--output-prefix",
            "s3://tags/umbrella/",
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    key = completed.stdout.strip()
    assert store.authenticate(key).output_prefixes == ("s3://tags/umbrella/",)
    again = subprocess.run(
        [sys.executable, "-m", "tagging_platform.cli", "api-key", "create", "umbrella"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "--rotate" in again.stderr


def test_a_revoked_key_gets_401_and_the_customer_keeps_its_record(api, s3, settings, api_settings):
    import time

    import requests

    from tagging_platform.api.keys import CACHE_S

    key, _ = CustomerStore(s3, api_settings).create("revoked-co", rotate=True)
    status = lambda: (
        requests.get(f"{api.url}/v1/batches", headers={"Authorization": f"Bearer {key}"}, timeout=60).status_code
    )
    assert status() == 200  # the server now holds the record in its cache
    revoked = subprocess.run(
        [sys.executable, "-m", "tagging_platform.cli", "api-key", "revoke", "revoked-co"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + CACHE_S + 5
    while status() != 401:
        assert time.monotonic() < deadline, f"the revoked key still works after {CACHE_S + 5:.0f} s"
        time.sleep(0.5)
    record = json.loads(
        s3.get_object(Bucket=settings.warehouse_bucket, Key="api/customers/revoked-co/customer.json")["Body"].read()
    )
    assert record["key_sha256"] is None and record["key_revoked_at"]
    assert CustomerStore(s3, api_settings).create("revoked-co", rotate=True)[1].name == "revoked-co"  # a new key later
    unknown = subprocess.run(
        [sys.executable, "-m", "tagging_platform.cli", "api-key", "revoke", "nobody-here"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2 and "no customer 'nobody-here'" in unknown.stderr
