"""constraints.txt pins the whole resolved dependency set: every requirement of pyproject.toml at one version."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    found = [re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line) for line in lines if line and not line.startswith("#")]
    assert all(found), [line for line, m in zip(lines, found) if not m]
    return {canonicalize_name(m[1]): m[2] for m in found}


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_every_requirement_of_pyproject_is_pinned_within_its_range():
    pinned = pins()
    missing = [str(r) for r in requirements() if canonicalize_name(r.name) not in pinned]
    assert not missing, f"not in constraints.txt (regenerate it with pip freeze): {missing}"
    outside = {
        str(r): pinned[canonicalize_name(r.name)]
        for r in requirements()
        if not r.specifier.contains(pinned[canonicalize_name(r.name)], prereleases=True)
    }
    assert not outside, f"constraints.txt pins these outside pyproject.toml's range: {outside}"


def test_the_makefile_installs_with_the_constraints_and_its_weights_as_pinned():
    makefile = (REPO / "Makefile").read_text()
    installs = re.findall(r"^\t.*\bpip install\b.*$|^PIP_INSTALL :=.*$", makefile, re.MULTILINE)
    assert installs and all("-c constraints.txt" in line or "$(PIP_INSTALL)" in line for line in installs), installs
    weights = dict(re.findall(r"([\w\-]+)==(\S+)", re.search(r"^WEIGHTS := (.*)$", makefile, re.MULTILINE)[1]))
    pinned = pins()
    assert {canonicalize_name(k): v for k, v in weights.items()} == {
        canonicalize_name(k): pinned[canonicalize_name(k)] for k in weights
    }
