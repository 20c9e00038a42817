"""docs/ARCHITECTURE.md stays true to the code (issue #26): every bus stream is in its table and its diagram,
every service folder is named, and every repo path, class, constant and metric it writes in backticks exists."""

from __future__ import annotations

import functools
import re

from contracts.topics import STREAMS
from tests.conftest import REPO

DOC = REPO / "docs" / "ARCHITECTURE.md"
# A span in backticks starting with one of these (and holding a "/") is a path in the repository.
REPO_PREFIXES = ("contracts/", "common/", "services/", "compose/", "k3s/", "tests/", "benchmarks/", "scripts/", "docs/")
CODE_FOLDERS = ("contracts", "common", "services")
IDENTIFIER = re.compile(r"^_?[A-Za-z][A-Za-z0-9_]*$")
METRIC = re.compile(r"^edgesight_[a-z0-9_]+$")


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _prose() -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^```.*?^```", "", _text(), flags=re.DOTALL | re.MULTILINE)


def _spans() -> list[str]:
    return re.findall(r"`([^`\n]+)`", _prose())


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", _prose(), flags=re.DOTALL | re.MULTILINE)
    assert match, f"a section '## {title}'"
    return match.group(1)


def _mermaid() -> str:
    blocks = re.findall(r"^```mermaid\n(.*?)^```", _text(), flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, "one Mermaid diagram of services and streams"
    return blocks[0]


@functools.lru_cache(maxsize=1)
def _source() -> str:
    """The Python sources of the code the page describes, in one string."""
    return "\n".join(
        path.read_text(encoding="utf-8") for folder in CODE_FOLDERS for path in sorted((REPO / folder).rglob("*.py"))
    )


@functools.lru_cache(maxsize=1)
def _deploy_text() -> str:
    files = [*(REPO / "compose").rglob("*.yml"), *(REPO / "compose").rglob("*.yaml"), *(REPO / "k3s").rglob("*.yaml")]
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(files))


def test_the_page_is_one_page_with_one_flowchart() -> None:
    assert len(_text().splitlines()) <= 300, "one page: say less, link to README/DEVELOPERS for detail"
    assert _mermaid().startswith("flowchart")


def test_every_stream_is_in_the_bus_table_and_the_diagram() -> None:
    rows = set(re.findall(r"^\| `([^`]+)` \|", _section("The bus"), flags=re.MULTILINE))
    assert rows == set(STREAMS), f"bus table vs contracts/topics.py: missing {STREAMS - rows}, unknown {rows - STREAMS}"
    diagram = _mermaid()
    for stream in sorted(STREAMS):
        assert re.search(rf"\|[^|\n]*\b{stream}\b[^|\n]*\|", diagram), (
            f"stream {stream!r} is on no arrow of the diagram"
        )


def test_every_service_folder_is_named() -> None:
    services = sorted(path.parent.name for path in (REPO / "services").glob("*/service.py"))
    assert services, "services/*/service.py"
    text = _text()
    for name in services:
        assert f"`services/{name}/`" in text, f"services/{name}/ is not on the page"


def test_every_repo_path_exists() -> None:
    checked = 0
    for span in _spans():
        if "/" not in span or not span.startswith(REPO_PREFIXES) or " " in span:
            continue
        checked += 1
        if "<" in span or "*" in span:  # a pattern: services/<name>/ names at least one thing
            pattern = re.sub(r"<[^>]*>", "*", span).rstrip("/")
            assert list(REPO.glob(pattern)), f"`{span}` matches nothing in the repository"
        else:
            assert (REPO / span).exists(), f"`{span}` does not exist in the repository"
    assert checked >= 20, "the page names the code it describes"


def test_every_name_exists_in_the_code() -> None:
    """Classes and constants are defined; other identifiers occur; metrics and variables are used."""
    source = _source()
    anywhere = source + _deploy_text()
    for span in set(_spans()):
        if METRIC.match(span):
            base = span.removesuffix("_total")
            assert f'"{base}"' in source or f'"{span}"' in source, f"metric `{span}` is registered nowhere"
        elif span.startswith("EDGESIGHT_") and IDENTIFIER.match(span):  # an environment variable
            assert f'"{span}"' in source, f"environment variable `{span}` is read nowhere"
        elif IDENTIFIER.match(span) and span.lstrip("_")[0].isupper():
            definition = rf"^\s*(class|def) {span}\b|^\s*{span}\s*[:=]"
            assert re.search(definition, source, flags=re.MULTILINE), f"`{span}` is defined nowhere in the code"
        elif IDENTIFIER.match(span):
            assert re.search(rf"\b{span}\b", anywhere), f"`{span}` occurs nowhere in the code"
