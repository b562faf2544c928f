"""The installed package carries the Dagster layer, so the image installs it instead of copying folders by hand."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from tagging_platform.settings import PROCESS_ENV

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()
LAYER = ("tagging_platform", "assets", "resources", "sensors")
MODULES = ("definitions.py", "executors.py")


def test_a_built_wheel_holds_the_product_and_its_dagster_layer(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "tests", "bench", "build", "*.egg-info")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=source,
        check=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("tagging_platform-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(REPO)) for d in LAYER for p in (REPO / d).rglob("*.py")} | set(MODULES)
    assert not expected - names, f"the wheel lacks {sorted(expected - names)}"
    assert any(n.startswith("tagging_platform/data/") for n in names)


def test_the_dockerfile_installs_the_package_and_copies_no_source_by_hand():
    assert not re.findall(r"^(?:COPY|ADD)\b.*", DOCKERFILE, re.MULTILINE), (
        "the image should get its code from `pip install .`"
    )
    assert "pip install ." in DOCKERFILE


def test_the_code_server_loads_the_installed_definitions_module():
    cmd = re.search(r"^CMD (\[.*\])", DOCKERFILE, re.MULTILINE).group(1)
    assert yaml.safe_load(cmd)[-4:] == ["-m", "definitions", "-a", "defs"]
    values = yaml.safe_load((REPO / "deploy" / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "definitions", "-a", "defs"]


def test_the_image_sets_the_process_environment_every_step_process_gets():
    env = dict(
        re.findall(r"^\s+([A-Z_]+)=(\S+?)(?: \\)?$", DOCKERFILE.split("\nENV ", 1)[1].split("\n\n")[0], re.MULTILINE)
    )
    assert {k: env.get(k) for k in PROCESS_ENV} == PROCESS_ENV
