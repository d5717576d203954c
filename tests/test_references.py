"""Every file a user is sent to exists in the repository, and every ``#anchor`` is a heading.

Scans the code, configs, scripts and documents (not the tests, which name missing
files on purpose) for Markdown links, ``*.md`` names and repository paths
(``docs/...``, ``scripts/...``, ``configs/...``, ...). Paths with placeholders
(``<Trainer>``, ``{shots}``, ``*``, ``$VAR``) are patterns, not files, and are skipped.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["README.md", "INSTALL.md", "DATASETS.md", "CONTRIBUTING.md", "train.py", "pyproject.toml",
           "docs", "config", "trainers", "datasets", "configs", "scripts", "examples", ".ci"]
SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".txt"}
TOP = ("docs", "scripts", "configs", "config", "trainers", "datasets", "examples", "tests")

MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w./$<{-])((?:[\w.-]+/)*[\w.-]+\.md)(?!\w)(#[\w-]+)?")
REPO_PATH = re.compile(r"(?<![\w./$<{-])((?:" + "|".join(TOP) + r")/[\w./<>{}*$-]*)")
PLACEHOLDER = re.compile(r"[<>{}*$]")
# Names that are not files of the repository, on purpose.
NOT_FILES = {
    "table.md": "written by scripts/results.py into the summary folder",
    "paper.md": "written by scripts/results.py --paper into the summary folder",
    "gpu_check.md": "written by scripts/bench/gpu_check.py into its --out folder",
    "output/gpu_check/gpu_check.md": "gpu_check.py's default output, written when it runs",
    "configs/trainers/TaskWordCoOp/": "the folder README.md#add-a-trainer tells the reader to create",
    "configs/trainers/SoftCPT/tny.yaml": "the misspelt path of README.md#troubleshooting's example",
}


def scanned_files() -> list[Path]:
    out = []
    for name in SCANNED:
        path = REPO / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += [p for p in sorted(path.rglob("*")) if p.suffix in SUFFIXES and p.is_file()
                    and "__pycache__" not in p.parts]
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    in_code, out = False, set()
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def resolve(target: str, source: Path) -> Path | None:
    """The file ``target`` names, relative to the repository root or to ``source``'s folder."""
    for base in (REPO, source.parent):
        candidate = (base / target).resolve()
        if candidate.exists() and (candidate == REPO or REPO in candidate.parents):
            return candidate
    return None


def references(path: Path) -> list[tuple[str, str | None]]:
    """(file, anchor or None) named in ``path``."""
    text = path.read_text()
    refs = []
    if path.suffix == ".md":
        for link in MD_LINK.findall(text):
            if re.match(r"[a-z]+:", link) or PLACEHOLDER.search(link):
                continue  # a URL or a pattern
            file, _, anchor = link.partition("#")
            refs.append((file or str(path.relative_to(REPO)), anchor or None))
    for name, anchor in MD_NAME.findall(text):
        refs.append((name, anchor[1:] or None))
    for raw in REPO_PATH.findall(text):
        if PLACEHOLDER.search(raw):
            continue
        refs.append((raw.split("::")[0].rstrip(".,:;)`'\""), None))
    return refs


def broken_references() -> list[str]:
    problems = []
    for path in scanned_files():
        where = path.relative_to(REPO)
        for target, anchor in references(path):
            if target in NOT_FILES:
                continue
            found = resolve(target, path)
            if found is None:
                problems.append(f"{where}: {target} does not exist")
            elif anchor and found.suffix == ".md" and anchor not in anchors(found):
                problems.append(f"{where}: {target}#{anchor} is not a heading of {target}")
    return sorted(set(problems))


def test_every_referenced_file_and_anchor_exists():
    problems = broken_references()
    assert not problems, "references to nothing:\n" + "\n".join(problems)


def test_the_checker_finds_what_it_should(tmp_path, monkeypatch):
    """The scan catches a missing file, a missing anchor and an outside note; it skips patterns."""
    doc = REPO / "docs" / "example.md"  # never written: its text is given below
    text = ("see SPEC.md, [x](../DATASETS.md#no-such-heading), docs/method.md#variants, "
            "scripts/nothing_here.sh and configs/trainers/<Trainer>/*.yaml")
    monkeypatch.setattr(Path, "read_text", lambda self: text if self == doc else _read(self))
    monkeypatch.setattr("test_references.scanned_files", lambda: [doc])
    problems = broken_references()
    assert "docs/example.md: SPEC.md does not exist" in problems
    assert "docs/example.md: ../DATASETS.md#no-such-heading is not a heading of ../DATASETS.md" in problems
    assert "docs/example.md: scripts/nothing_here.sh does not exist" in problems
    assert len(problems) == 3


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


@pytest.mark.parametrize("heading, anchor", [
    ("CoOp's datasets", "coops-datasets"), ("The toy run's table and plot", "the-toy-runs-table-and-plot"),
    ("`TRAINER.SOFTCPT`", "trainersoftcpt"), ("Base-to-new", "base-to-new")])
def test_slug_is_githubs(heading, anchor):
    assert slug(heading) == anchor
