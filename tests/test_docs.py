"""The documentation stays current with the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from moejet.variants import switches_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_paper_vs_release_page_is_generated_from_variants():
    """docs/paper-vs-release.md is exactly `python -m moejet.variants` output: regenerate it after editing
    src/moejet/variants.py with ``python -m moejet.variants > docs/paper-vs-release.md``."""
    page = (ROOT / "docs" / "paper-vs-release.md").read_text(encoding="utf-8")
    assert page == switches_markdown(), (
        "docs/paper-vs-release.md is stale: run `python -m moejet.variants > docs/paper-vs-release.md`"
    )


# Citations point at the paper (section / equation) or at the project's own docs, never at "SPEC", a file outside the
# repository. Identifiers that merely contain the letters (DATASET_SPEC) are not the word.
SPEC_WORD = re.compile(r"\bSPEC\b")
CITING_FILES = ("src/**/*.py", "tests/**/*.py", "benchmarks/*.py", "configs/*.py", "configs/*.md", "docs/**/*.md",
                "README.md")


def test_nothing_cites_a_spec_outside_the_repository():
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for pattern in CITING_FILES for path in sorted(ROOT.glob(pattern)) if path != Path(__file__).resolve()
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if SPEC_WORD.search(line)]
    assert not hits, "cite the paper or the project's docs, not SPEC:\n" + "\n".join(hits)
