"""The documentation stays true to the tree: README.md as a short front page whose Quickstart commands
are the ones CI runs, docs/configuration.md naming every FASTCONV_* environment variable the code reads
(and none that it no longer reads), and no broken relative link or image in README.md and docs/*.md.

Reads files only (no build, no kernels); the repository root is found from this file's location."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DOC = ROOT / "docs" / "configuration.md"

# Where the code lives that may read a FASTCONV_* variable, and which files there are code.
CODE_DIRS = ("fastconv", "csrc", "kernels", "tests", "bench")
CODE_FILES = ("setup.py", ".ci/run")
CODE_SUFFIXES = {".py", ".cpp", ".cc", ".h", ".hpp", ".cu", ".cuh", ".sh", ".toml", ".cfg"}
SKIP_PARTS = {"__pycache__", "build", "results", ".hypothesis", ".pytest_cache"}

NAME = re.compile(r"\bFASTCONV_[A-Z0-9_]+\b")
# The ways the code reads an environment variable: os.environ.get / [] / setdefault, (std::)getenv,
# bench/conftest.py's _env_flag, csrc/cpu/cl_blocks.h's algorithm_switch_on, pybind11's ParallelCompile
# (reads the named variable).
READ = re.compile(r"""(?:environ\.get|environ\.setdefault|getenv|_env_flag|algorithm_switch_on|ParallelCompile)\(\s*["'](FASTCONV_[A-Z0-9_]+)["']"""
                  r"""|environ\[\s*["'](FASTCONV_[A-Z0-9_]+)["']\s*\]""")
# A table row whose first cell is one variable: | `FASTCONV_X` | ...
TABLE_ROW = re.compile(r"^\|\s*`(FASTCONV_[A-Z0-9_]+)`\s*\|", re.M)

QUICKSTART = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[train]" '
    "&& fastconv train",
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[test,train]" '
    "&& python -m pytest tests -q -n 2",
)
README_MAX_LINES = 160


def code_files() -> Iterator[Path]:
    for name in CODE_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    for d in CODE_DIRS:
        for path in sorted((ROOT / d).rglob("*")):
            rel = path.relative_to(ROOT)
            if (path.is_file() and path.suffix in CODE_SUFFIXES and not SKIP_PARTS & set(rel.parts)
                    and path.resolve() != Path(__file__).resolve()):
                yield path


def scan_code():
    """(every FASTCONV_ name in the code, the names read as environment variables): name -> files."""
    mentioned: Dict[str, Set[str]] = {}
    read: Dict[str, Set[str]] = {}
    for path in code_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = str(path.relative_to(ROOT))
        for name in NAME.findall(text):
            mentioned.setdefault(name, set()).add(rel)
        for match in READ.finditer(text):
            read.setdefault(match.group(1) or match.group(2), set()).add(rel)
    return mentioned, read


@pytest.fixture(scope="module")
def code_names():
    return scan_code()


@pytest.fixture(scope="module")
def config_doc() -> str:
    return CONFIG_DOC.read_text(encoding="utf-8")


def test_the_scan_finds_the_code(code_names):
    mentioned, read = code_names
    # A scan that found nothing would pass every check below.
    for name in ("FASTCONV_BACKEND", "FASTCONV_CPU_ISA", "FASTCONV_CUDA", "FASTCONV_BENCH_SHORT"):
        assert name in read, f"{name} not found as an environment read; the scan is broken"


def test_every_variable_the_code_reads_is_in_a_configuration_table(code_names, config_doc):
    _, read = code_names
    documented = set(TABLE_ROW.findall(config_doc))
    missing = {n: sorted(f) for n, f in read.items() if n not in documented}
    assert not missing, f"read by the code but not in a table of docs/configuration.md: {missing}"


def test_every_variable_in_the_configuration_tables_is_still_read(code_names, config_doc):
    _, read = code_names
    rows = TABLE_ROW.findall(config_doc)
    assert len(rows) == len(set(rows)), "a variable has two rows in docs/configuration.md"
    stale = sorted(set(rows) - set(read))
    assert not stale, f"in docs/configuration.md but read nowhere in the code: {stale}"


def test_every_fastconv_name_in_the_code_is_named_in_configuration_md(code_names, config_doc):
    mentioned, _ = code_names
    named = set(NAME.findall(config_doc))
    missing = {n: sorted(f) for n, f in mentioned.items() if n not in named}
    assert not missing, (f"FASTCONV_ names in the code that docs/configuration.md does not name (an environment "
                         f"variable goes in a table, anything else in the list of other names): {missing}")
    gone = sorted(named - set(mentioned))
    assert not gone, f"docs/configuration.md names what the code no longer contains: {gone}"


def test_readme_is_a_front_page_with_the_quickstart_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    for command in QUICKSTART:
        assert command in lines, f"README.md lost the Quickstart command line:\n{command}"


def test_ci_runs_the_readme_test_command():
    """CI runs README's test command, adding only `--durations=N` (a report, not a selection)."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = QUICKSTART[1].rsplit("&& ", 1)[1]
    assert any(re.fullmatch(re.escape(command) + r"( --durations=\d+)?", line) for line in ci.splitlines()), (
        f".ci/run does not run README's test command:\n{command}")


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"""<(?:img|a)\b[^>]*\b(?:src|href)=["']([^"']+)["']""", re.I)
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    text = CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def doc_pages():
    return ([ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
            + [p for p in (ROOT / "bench" / "README.md", ROOT / "bench" / "results" / "README.md") if p.exists()])


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_exist(page):
    text = CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))
    targets = LINK.findall(text) + HTML_SRC.findall(text)
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no such heading)")
        elif ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"
