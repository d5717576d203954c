"""Every file a user is sent to exists in the repository, and every ``#anchor`` is a heading.

Scans the code, configs, scripts and documents for Markdown links, ``*.md`` names and
repository paths (``docs/...``, ``scripts/...``, ``configs/...``, ...). Paths with
placeholders (``<Trainer>``, ``{shots}``, ``*``, ``$VAR``) are patterns, not files, and are
skipped. The tests name missing files on purpose, so in them only ``FILE.md#anchor``
citations are checked. A Markdown link resolves from its own file's folder, as on GitHub;
a name in prose or code (``docs/method.md#keys`` in a message) from the repository root.
Anchors follow GitHub's rules: lower case, punctuation dropped, each space a hyphen,
``-1``, ``-2``... for repeated headings, nothing inside code fences or HTML comments.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()  # plants broken references on purpose
FOLDERS = ["docs", "config", "trainers", "datasets", "configs", "scripts", "examples", ".ci"]
SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".txt"}
TOP = ("docs", "scripts", "configs", "config", "trainers", "datasets", "examples", "tests")
DOCUMENTS = ["README.md", "INSTALL.md", "DATASETS.md", "CONTRIBUTING.md"]  # plus docs/*.md

MD_LINK = re.compile(r"\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
MD_LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.MULTILINE)
MD_NAME = re.compile(r"(?<![\w./$<{-])((?:[\w.-]+/)*[\w.-]+\.md)(?!\w)(#[\w-]+)?")
REPO_PATH = re.compile(r"(?<![\w./$<{-])((?:" + "|".join(TOP) + r")/[\w./<>{}*$-]*)")
PLACEHOLDER = re.compile(r"[<>{}*$]")
ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:name|id)=\"([^\"]+)\"")
# Names that are not files of the repository, on purpose.
NOT_FILES = {
    "table.md": "written by scripts/results.py into the summary folder",
    "paper.md": "written by scripts/results.py --paper into the summary folder",
    "gpu_check.md": "written by scripts/bench/gpu_check.py into its --out folder",
    "output/gpu_check/gpu_check.md": "gpu_check.py's default output, written when it runs",
    "configs/trainers/TaskWordCoOp/": "the folder docs/add_a_trainer.md tells the reader to create",
    "configs/trainers/SoftCPT/tny.yaml": "the misspelt path of docs/troubleshooting.md#configuration's example",
}


def _code_file(path: Path) -> bool:
    if path.suffix in SUFFIXES:
        return True
    return not path.suffix and path.read_bytes()[:2] == b"#!"  # a script without suffix (.ci/run)


def scanned_files() -> list[Path]:
    """The repository's own files: top-level files and FOLDERS, not the tests."""
    out = [p for p in sorted(REPO.iterdir()) if p.is_file() and p.suffix in SUFFIXES]
    for name in FOLDERS:
        out += [p for p in sorted((REPO / name).rglob("*")) if p.is_file()
                and "__pycache__" not in p.parts and _code_file(p)]
    return out


def cited_test_files() -> list[Path]:
    return [p for p in sorted((REPO / "tests").glob("*.py")) if p.resolve() != SELF]


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).lower()                          # HTML tags
    text = re.sub(r"[^\w\- ]", "", text)                                 # \w: also non-ASCII letters
    return text.replace(" ", "-")


def headings(text: str) -> list[str]:
    """The text of every ATX and setext heading, outside code fences and HTML comments."""
    text = HTML_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    fence, previous, out = None, "", []
    for line in text.splitlines():
        opening = FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence) \
                    and not line.strip()[len(opening.group(1)):].strip():
                fence = None
            previous = ""
            continue
        if opening:
            fence, previous = opening.group(1), ""
            continue
        atx = ATX_HEADING.match(line)
        if atx:
            out.append(atx.group(1) or "")
            previous = ""
        elif SETEXT_UNDERLINE.match(line) and previous.strip() and not previous.lstrip().startswith(
                ("|", "-", "*", "+", ">")):
            out.append(previous)
            previous = ""
        else:
            previous = line
    return out


def anchors(md: Path) -> set[str]:
    """Every anchor GitHub gives ``md``: repeated headings get -1, -2, ..."""
    text = md.read_text()
    out, seen = set(HTML_ANCHOR.findall(text)), {}
    for heading in headings(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def resolve(target: str, source: Path, link: bool = False) -> Path | None:
    """The file ``target`` names: a Markdown link from ``source``'s folder (``/x`` from the
    repository root), a name in prose or code from the repository root or ``source``'s folder."""
    if link:
        bases = [REPO] if target.startswith("/") else [source.parent]
        target = target.lstrip("/")
    else:
        bases = [REPO, source.parent]
    for base in bases:
        candidate = (base / target).resolve()
        if candidate.exists() and (candidate == REPO or REPO in candidate.parents):
            return candidate
    return None


def references(path: Path, anchored_names_only: bool = False) -> list[tuple[str, str | None, bool]]:
    """(file, anchor or None, is a Markdown link) named in ``path``."""
    text = path.read_text()
    refs = []
    if path.suffix == ".md" and not anchored_names_only:
        for link in MD_LINK.findall(text) + MD_LINK_DEFINITION.findall(text):
            if re.match(r"[a-z]+:", link) or PLACEHOLDER.search(link):
                continue  # a URL or a pattern
            file, _, anchor = link.partition("#")
            refs.append((file, anchor or None, True))  # file "": this document
    for name, anchor in MD_NAME.findall(text):
        if anchor or not anchored_names_only:
            refs.append((name, anchor[1:] or None, False))
    if anchored_names_only:
        return refs
    for raw in REPO_PATH.findall(text):
        if PLACEHOLDER.search(raw):
            continue
        refs.append((raw.split("::")[0].rstrip(".,:;)`'\""), None, False))
    return refs


def broken_references() -> list[str]:
    problems = []
    sources = [(p, False) for p in scanned_files()] + [(p, True) for p in cited_test_files()]
    for path, anchored_names_only in sources:
        where = path.relative_to(REPO)
        for target, anchor, link in references(path, anchored_names_only):
            if target in NOT_FILES:
                continue
            found = resolve(target, path, link) if target else path
            target = target or path.name
            if found is None:
                problems.append(f"{where}: {target} does not exist"
                                + (f" (from {where.parent}/)" if link else ""))
            elif anchor and found.suffix == ".md" and anchor not in anchors(found):
                problems.append(f"{where}: {target}#{anchor} is not a heading of {target}")
    return sorted(set(problems))


def test_every_referenced_file_and_anchor_exists():
    problems = broken_references()
    assert not problems, "references to nothing:\n" + "\n".join(problems)


def test_every_document_is_scanned():
    """The user's documents are all read, and so is the CI script without a suffix."""
    scanned = {p.relative_to(REPO).as_posix() for p in scanned_files()}
    expected = set(DOCUMENTS) | {p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")}
    assert expected <= scanned, sorted(expected - scanned)
    assert ".ci/run" in scanned and "train.py" in scanned
    assert "tests/conftest.py" in {p.relative_to(REPO).as_posix() for p in cited_test_files()}


def test_the_checker_finds_what_it_should(monkeypatch):
    """The scan catches a missing file, a missing anchor, a link that only resolves from the
    root, and an anchor cited by a test; it skips patterns and a test's plain paths."""
    doc, test = REPO / "docs" / "example.md", REPO / "tests" / "test_example.py"  # never written
    texts = {
        doc: ("see SPEC.md, [x](../DATASETS.md#no-such-heading), docs/method.md#variants, "
              "[y](README.md), [z](method.md#keys), [w](#here), [v](#not-here), "
              "scripts/nothing_here.sh and configs/trainers/<Trainer>/*.yaml\n\n## Here\n"),
        test: 'match=r"see README.md#no-such-section", "scripts/missing_on_purpose.sh"',
    }
    monkeypatch.setattr(Path, "read_text", lambda self: texts[self] if self in texts else _read(self))
    monkeypatch.setattr("test_references.scanned_files", lambda: [doc])
    monkeypatch.setattr("test_references.cited_test_files", lambda: [test])
    problems = broken_references()
    assert "docs/example.md: SPEC.md does not exist" in problems
    assert "docs/example.md: ../DATASETS.md#no-such-heading is not a heading of ../DATASETS.md" in problems
    assert "docs/example.md: scripts/nothing_here.sh does not exist" in problems
    assert "docs/example.md: README.md does not exist (from docs/)" in problems
    assert "docs/example.md: example.md#not-here is not a heading of example.md" in problems
    assert "tests/test_example.py: README.md#no-such-section is not a heading of README.md" in problems
    assert len(problems) == 6


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


@pytest.mark.parametrize("heading, anchor", [
    ("CoOp's datasets", "coops-datasets"), ("The toy run's table and plot", "the-toy-runs-table-and-plot"),
    ("`TRAINER.SOFTCPT`", "trainersoftcpt"), ("Base-to-new", "base-to-new"),
    ("Layout of $DATA", "layout-of-data"), ("One machine: GPUS and JOBS", "one-machine-gpus-and-jobs"),
    ("`TRAINER.COOP` (CoOp-CA, CoOp-CS, CoOp-MT)", "trainercoop-coop-ca-coop-cs-coop-mt"),
    ("See [the method](docs/method.md)", "see-the-method"), ("Größe & Maß", "größe--maß")])
def test_slug_is_githubs(heading, anchor):
    assert slug(heading) == anchor


def test_anchors_follow_githubs_rules(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# Title #\n\n## Configuration\n\n### Configuration\n\n## Configuration\n\n"
                  "```bash\n# not a heading\n```\n\n~~~\n## nor this\n~~~\n\n"
                  "<!--\n## nor this one\n-->\n\nSetext heading\n---\n\n#hashtag\n\n"
                  "| a | b |\n|---|---|\n\n<a id=\"explicit\"></a>\n")
    assert anchors(md) == {"title", "configuration", "configuration-1", "configuration-2",
                           "setext-heading", "explicit"}


def test_ci_runs_the_readmes_test_command():
    """.ci/run says it runs exactly the README's test command: the full-suite line of the
    README's Tests section is .ci/run's last command."""
    readme = (REPO / "README.md").read_text()
    assert "\n## Tests\n" in readme, "README.md has no '## Tests' section (.ci/run's command)"
    section = readme.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                for line in block.splitlines()]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] in commands, f".ci/run ends with {ci[-1]!r}; README's Tests section has {commands}"


def test_readme_stays_a_short_path():
    """README.md is the user's path (what it is, the commands, the protocol, the trainers, where
    the rest is). It grew from 609 to 816 lines within a few changes before it was cut to ~270;
    detail belongs in docs/, linked from it."""
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines (limit 300): move detail to a page under docs/"
