"""Every repository path the docs and the code cite exists (issue 22).

Sources: README.md and docs/**/*.md (the whole text); the comments and string
literals (docstrings included) of pedcrowd/, scripts/ and tests/; the comments
of configs/*.yaml. A cited path is a word starting with ``pedcrowd/``,
``scripts/`` or ``tests/`` and ending in ``.py``, ``docs/`` ending in ``.md``
or ``.png``, ``configs/`` ending in ``.yaml``, or any of these five folders
followed by a sub-folder and ``/``. ``{a,b}`` alternatives are expanded and a
``*`` must match at least one file. Not checked: URLs and other repositories'
paths (the word must not follow a ``/`` or ``.``: ``github.com/x/configs/a.py``,
``../shared/docs/...``), paths under ``data/`` and ``runs/`` (data sets and run
directories live outside the repository, ``docs/data.md``), and words the five
prefixes begin inside another word (``pedcrowd/data/x.py`` is checked whole).
A placeholder is written with angle brackets, ``pedcrowd/losses/<name>.py``:
the word ends at ``<``, so only the folder is checked.

A citation of a section, ``docs/techniques.md`` section "NMS-Loss", must name a
heading of that page. A bare document name (``EVAL_PROTOCOL.md``) cited in the
code must be a file of the repository.
"""

from __future__ import annotations

import itertools
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

PATH_RE = re.compile(
    r"(?<![\w./-])"  # not inside another path or a URL
    r"((?:pedcrowd|scripts|tests|docs|configs)/[\w./{},*-]*)"
)
SECTION_RE = re.compile(r"(docs/[\w./-]+\.md)`*,? sections? \"([^\"]+)\"")
BARE_DOC_RE = re.compile(r"(?<![\w./-])([A-Z][A-Z_]+\.md)\b")
EXTENSIONS = {
    "pedcrowd": (".py",),
    "scripts": (".py",),
    "tests": (".py",),
    "docs": (".md", ".png"),
    "configs": (".yaml",),
}
# Cited but not in the repository, on purpose (none now; the test fails when an entry
# is no longer cited, so the set cannot go stale).
KNOWN_MISSING_DOCS: set[str] = set()


def _python_text(path: Path) -> str:
    """Comments and string literals of a Python file, one per line, ``#`` removed."""
    parts = []
    with path.open("rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type == tokenize.COMMENT:
                parts.append(tok.string.lstrip("#"))
            elif tok.type == tokenize.STRING:
                parts.append(tok.string)
    return "\n".join(parts)


def _yaml_comments(path: Path) -> str:
    return "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)


def _sources() -> dict[str, str]:
    """Repository-relative name -> the text whose citations are checked."""
    texts = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        texts[str(path.relative_to(ROOT))] = path.read_text()
    for folder in ("pedcrowd", "scripts", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != THIS:
                texts[str(path.relative_to(ROOT))] = _python_text(path)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        texts[str(path.relative_to(ROOT))] = _yaml_comments(path)
    return texts


SOURCES = _sources()


def _expand_braces(word: str) -> list[str]:
    """``a/{b,c}.py`` -> ``["a/b.py", "a/c.py"]`` (several groups multiply)."""
    pieces = re.split(r"\{([^{}]*)\}", word)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(pieces)]
    return ["".join(c) for c in itertools.product(*choices)]


def cited_paths(text: str) -> set[str]:
    """The repository paths ``text`` cites (see the module docstring for the rule)."""
    found = set()
    for match in PATH_RE.finditer(text):
        word = match.group(1).rstrip(".,")
        top = word.split("/", 1)[0]
        is_folder = word.endswith("/") and word.count("/") >= 2
        if not (is_folder or word.endswith(EXTENSIONS[top])):
            continue
        found.update(_expand_braces(word))
    return found


def _exists(path: str) -> bool:
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def _heading_names(page: Path) -> set[str]:
    names = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            names.add(" ".join(line.lstrip("#").replace("`", "").split()))
    return names


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_cited_path_exists(source):
    missing = sorted(p for p in cited_paths(SOURCES[source]) if not _exists(p))
    assert not missing, f"{source} cites paths that are not in the repository: {missing}"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_cited_section_is_a_heading(source):
    text = " ".join(SOURCES[source].split())  # a section name may wrap (and lose its "#")
    wrong = []
    for page, name in SECTION_RE.findall(text):
        if (ROOT / page).is_file() and name not in _heading_names(ROOT / page):
            wrong.append(f"{page} section {name!r}")
    assert not wrong, f"{source} cites sections that are not headings: {wrong}"


def test_bare_document_names_cited_in_the_code_exist():
    repo_docs = {p.name for p in ROOT.rglob("*.md") if ".git" not in p.parts}
    cited: dict[str, set[str]] = {}
    for source, text in SOURCES.items():
        if source.endswith(".py"):
            for name in BARE_DOC_RE.findall(text):
                cited.setdefault(name, set()).add(source)
    missing = {name for name in cited if name not in repo_docs}
    unexpected = {name: sorted(cited[name]) for name in missing - KNOWN_MISSING_DOCS}
    assert not unexpected, f"documents cited but not in the repository: {unexpected}"
    assert missing == KNOWN_MISSING_DOCS, (
        f"no longer cited or now present, remove from KNOWN_MISSING_DOCS: "
        f"{sorted(KNOWN_MISSING_DOCS - missing)}"
    )


def test_the_rule_on_examples():
    text = (
        "see `pedcrowd/losses/{focal,qfl}.py`, docs/training.md and configs/*_demo.yaml; "
        "https://github.com/x/y/blob/main/configs/caltech.py, ../shared/docs/REFERENCE.md, "
        "data/synth/annotations/val_gt.json, pedcrowd/media/, mmdet configs/pisa/x.py, "
        "pedcrowd/formats/<name>.py."
    )
    assert cited_paths(text) == {
        "pedcrowd/losses/focal.py",
        "pedcrowd/losses/qfl.py",
        "docs/training.md",
        "configs/*_demo.yaml",
        "pedcrowd/media/",
        "pedcrowd/formats/",
    }
    assert SECTION_RE.findall('``docs/techniques.md`` section "NMS-Loss";') == [
        ("docs/techniques.md", "NMS-Loss")
    ]
    assert _heading_names(ROOT / "docs" / "techniques.md") >= {"NMS-Loss", "Repulsion Loss"}
    assert _exists("configs/*_demo.yaml") and not _exists("pedcrowd/losses/no_such_loss.py")


def test_python_text_keeps_comments_and_strings_only(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""Doc: docs/a.md."""\nx = 1  # see pedcrowd/b.py\ny = tests_dir / "c.py"\n')
    text = _python_text(src)
    assert "docs/a.md" in text and " see pedcrowd/b.py" in text and "tests_dir" not in text
