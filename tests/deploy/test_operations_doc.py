"""docs/operations.md: its diagram is drawn from source by `make docs`, and it explains every part deploy/ ships."""

import re
import shutil
import subprocess

from tests.conftest import REPO, apt_install

DOCS = REPO / "docs"


def test_the_architecture_diagram_is_rendered_from_its_source_and_is_current(tmp_path):
    if not shutil.which("dot"):
        apt_install("graphviz")
    subprocess.run(["make", "-s", "docs"], cwd=REPO, check=True, capture_output=True)
    fresh = tmp_path / "architecture.png"
    subprocess.run(["dot", "-Tpng", "-Gdpi=110", "-o", str(fresh), str(DOCS / "architecture.dot")], check=True)
    assert fresh.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fresh.read_bytes() == (DOCS / "architecture.png").read_bytes(), "run `make docs` and commit the image"
    assert "![architecture](architecture.png)" in (DOCS / "operations.md").read_text()


def test_the_operations_guide_covers_every_file_in_deploy():
    guide = (DOCS / "operations.md").read_text()
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "deploy").rglob("*") if p.is_file()}
    shipped = {re.sub(r"deploy/iam/.*", "deploy/iam/", s) for s in shipped}
    shipped = {re.sub(r"deploy/prometheus/.*", "deploy/prometheus/", s) for s in shipped}
    missing = {s for s in shipped if s not in guide}
    assert not missing, f"docs/operations.md does not explain {sorted(missing)}"


def test_the_sizing_table_is_the_planners_under_the_shipped_settings():
    from tagging_platform.planning import sizing_table
    from tagging_platform.settings import Settings

    guide = (DOCS / "operations.md").read_text()
    match = re.search(r"<!-- sizing:begin -->\n(.*?)\n?<!-- sizing:end -->", guide, re.S)
    assert match, "docs/operations.md has no sizing table markers"
    fresh = sizing_table(Settings())
    assert match.group(1).strip() == fresh, (
        "docs/operations.md's sizing table is stale: put `tagging-platform plan --sizing` (shipped settings) "
        f"between its markers:\n{fresh}"
    )
