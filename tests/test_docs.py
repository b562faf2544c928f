"""The README and docs/ stand alone: every relative link resolves inside the repository."""

import re

import pytest

from tests.conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves_inside_the_repository(document):
    broken = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or REPO.resolve() not in path.parents:
            broken.append(target)
    assert not broken, f"{document.name} links to what the repository does not hold: {broken}"
