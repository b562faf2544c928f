"""The query examples of docs/querying.md, run as written against the demo's photographs, print what it shows."""

import os
import re
import shlex
import subprocess

import pytest

from tagging_platform import photos
from tagging_platform.cli import upload_batch
from tagging_platform.local import LocalPlatform
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def readme_examples() -> list[tuple[str, str]]:
    text = (REPO / "docs" / "querying.md").read_text()
    section = text[text.index("<!-- queries:") : text.index("<!-- end of queries -->")]
    return re.findall(r"```sh\n(.+?)\n```\n```text\n(.*?)\n```", section, flags=re.DOTALL)


def cells(output: str) -> list[list[str]]:
    return [re.split(r"\s{2,}|,", line.strip()) for line in output.strip().splitlines()]


def same_cell(shown: str, printed: str) -> bool:
    """Equal, or the same number to the README's two or three decimals (another CPU may round the last digit)."""
    try:
        return abs(float(shown) - float(printed)) <= 0.011
    except ValueError:
        return shown == printed


def test_readme_queries_print_what_the_readme_shows(tmp_path):
    examples = readme_examples()
    assert len(examples) >= 4 and all(command.startswith(".venv/bin/tagging-platform query") for command, _ in examples)
    # The outputs shown are float32's: a CPU with native bfloat16 would otherwise tag in it (after the gate),
    # and its confidences differ in the second decimal.
    overrides = {"TP_SENSOR_INTERVAL_S": "2", "TP_PRECISION": "float32"}
    with LocalPlatform(
        REPO / "workspace.yaml", settings_overrides=overrides, dagster_home=tmp_path / "home"
    ) as platform:
        # The README's two submissions: `submit --photos --name photos` and `--variants 1 --name originals`.
        for name, variants in (("photos", 4), ("originals", 1)):
            upload_batch(platform.s3(), platform.settings, name, photos.sample_set(variants_per_photo=variants))
        for name in ("photos", "originals"):
            assert platform.wait_for_run(name, timeout_s=600)["status"] == "SUCCESS"
        env = {**os.environ, "TP_S3_ENDPOINT": platform.settings.s3_endpoint}
        for command, shown in examples:
            argv = shlex.split(command)
            argv[0] = str(REPO / argv[0])
            completed = subprocess.run(
                argv, cwd=REPO, env=env, check=False, capture_output=True, text=True, timeout=120
            )
            assert completed.returncode == 0, completed.stderr
            expected, printed = cells(shown), cells(completed.stdout)
            assert len(printed) == len(expected), f"{command}\nREADME:\n{shown}\nprinted:\n{completed.stdout}"
            for want, got in zip(expected, printed, strict=True):
                assert len(want) == len(got) and all(map(same_cell, want, got)), (
                    f"{command}\nREADME:\n{shown}\nprinted:\n{completed.stdout}"
                )
