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
    match = re.search(r"<!-- sizing:begin -->\n(.*?)\n?<!-- sizing:end -->", guide, re.DOTALL)
    assert match, "docs/operations.md has no sizing table markers"
    fresh = sizing_table(Settings())
    assert match.group(1).strip() == fresh, (
        "docs/operations.md's sizing table is stale: put `tagging-platform plan --sizing` (shipped settings) "
        f"between its markers:\n{fresh}"
    )


def test_the_readmes_cost_line_is_the_planners_for_a_million_images():
    from tagging_platform.planning import plan_for
    from tagging_platform.settings import Settings

    plan = plan_for(Settings(), 1_000_000)
    line = (
        f"1,000,000 images plan as {plan.pods} pods, {plan.wall_s / 60:.1f} min, {plan.gpu_hours:.2f} GPU-hours, "
        f"{plan.startup_share:.1%} start-up, ${plan.cost_usd:,.2f}"
    )
    assert line in (REPO / "README.md").read_text(), f"README.md's cost line is stale; the planner says: {line}"


STEP = re.compile(r"\*\*([BTKO]\d+)\*\*")
PROTOCOL_PORT = re.compile(r"\b(?:HTTPS|HTTP|gRPC|PostgreSQL):\d+")


def numbered_edges(dot: str) -> dict[str, set[str]]:
    """Step id -> the protocol:port pairs on the diagram's edges labelled with it."""
    edges: dict[str, set[str]] = {}
    for label in re.findall(r'->\s*\w+\s*\[label="([^"]+)"', dot):
        step, _, rest = label.partition(" ")
        assert re.fullmatch(r"[BTKO]\d+", step), f"an edge without a step number: {label!r}"
        edges.setdefault(step, set()).update(PROTOCOL_PORT.findall(rest))
    return edges


def guide_steps(guide: str) -> dict[str, str]:
    """Step id -> the text of the list item where the guide first names it in bold."""
    steps = {}
    for match in STEP.finditer(guide):
        if match.group(1) not in steps:
            end = re.search(r"\n\s*(?:\d+\.|-) |\n\n", guide[match.end() :])
            steps[match.group(1)] = guide[match.start() : match.end() + (end.start() if end else len(guide))]
    return steps


def test_the_diagrams_numbered_edges_are_the_guides_numbered_steps_with_the_same_protocols_and_ports():
    edges = numbered_edges((DOCS / "architecture.dot").read_text())
    steps = guide_steps((DOCS / "operations.md").read_text())
    assert set(edges) == set(steps), (
        f"only on the diagram: {set(edges) - set(steps)}, only in the guide: {set(steps) - set(edges)}"
    )
    assert {"B1", "B8", "T1", "T4", "K1", "K2", "K3"} <= set(steps)
    for step, pairs in edges.items():
        missing = {p for p in pairs if p not in steps[step]}
        assert not missing, f"step {step}: the diagram says {missing}, the guide's step does not"
    assert numbered_edges('a -> b [label="B9 HTTP:1 x"];') == {"B9": {"HTTP:1"}}
