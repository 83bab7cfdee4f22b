"""The documentation stays current with the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moejet.variants import switches_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_paper_vs_release_page_is_generated_from_variants():
    """docs/paper-vs-release.md is exactly `python -m moejet.variants` output: regenerate it after editing
    src/moejet/variants.py with ``python -m moejet.variants > docs/paper-vs-release.md``."""
    page = (ROOT / "docs" / "paper-vs-release.md").read_text(encoding="utf-8")
    assert page == switches_markdown(), (
        "docs/paper-vs-release.md is stale: run `python -m moejet.variants > docs/paper-vs-release.md`"
    )


# Citations must point at the paper (section / equation) or at the project's own docs, never at "SPEC" (a file
# outside the repository). DATASET_SPEC and similar identifiers are not citations.
SPEC_CITATION = re.compile(r"SPEC\s*§|SPEC\b")


def _spec_citations() -> list[str]:
    hits = []
    for path in sorted((ROOT / "src" / "moejet").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SPEC_CITATION.search(line.replace("DATASET_SPEC", "")):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


@pytest.mark.docs_citations
def test_no_spec_citations_in_src():
    """CITATION CHECK: no .py file under src/moejet cites "SPEC" (cite the paper or docs/method.md instead)."""
    hits = _spec_citations()
    assert not hits, "cite the paper or the project's docs, not SPEC:\n" + "\n".join(hits)
