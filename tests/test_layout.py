"""The folders are the data flow, and this test keeps them so.

Stages (ingest, processors, actions) meet only through ``schemas`` messages on the bus and rows
in the store; they never import each other, and nothing imports the composition root
(``driftline``). See docs/architecture.md, "Folders and what each may import".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package → the packages (or modules) of ours it may import, besides itself
ALLOWED: dict[str, frozenset[str]] = {
    "schemas": frozenset(),
    "bus": frozenset({"schemas"}),
    "store": frozenset({"schemas", "bus.aio"}),
    "ingest": frozenset({"schemas", "bus", "store"}),
    "processors": frozenset({"schemas", "bus", "store"}),
    "actions": frozenset({"schemas", "bus", "store"}),
    "loadtest": frozenset({"schemas", "store"}),
}
OURS = frozenset({*ALLOWED, "driftline", "tests"})


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in a module, with its line, including those inside functions."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from bus import aio` names the module bus.aio
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _permitted(imported: str, allowed: frozenset[str]) -> bool:
    return any(imported == a or imported.startswith(a + ".") for a in allowed)


def violations(root: Path) -> list[str]:
    """One line per import that breaks the layout, naming the file, the line and the rule."""
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, imported in imports_of(path):
                top = imported.split(".")[0]
                if top not in OURS or top == package or _permitted(imported, allowed):
                    continue
                rule = ", ".join(sorted(allowed)) or "nothing of ours"
                found.append(
                    f"{path.relative_to(root)}:{line} imports {imported} "
                    f"({package}/ may import only {rule})"
                )
    return found


def test_the_project_keeps_its_layout() -> None:
    assert violations(REPO) == []


def test_the_folders_read_as_the_data_flow() -> None:
    for folder in ("schemas", "bus", "ingest", "processors", "actions", "store", "driftline"):
        assert (REPO / folder / "__init__.py").is_file(), folder
    assert not (REPO / "driftline" / "store.py").exists()


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "ingest/leak.py",
            "from processors.detectors import evaluate\n",
            "processors.detectors.evaluate",
        ),
        ("actions/leak.py", "def f():\n    import ingest.tokens\n", "ingest.tokens"),
        ("processors/leak.py", "from driftline import settings\n", "driftline.settings"),
        ("store/leak.py", "from bus import KafkaBus\n", "bus.KafkaBus"),
        ("schemas/leak.py", "import store\n", "store"),
    ],
)
def test_a_stage_reaching_into_another_is_named(
    tmp_path: Path, module: str, source: str, expected: str
) -> None:
    for package in ALLOWED:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / module).write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1
    assert found[0].startswith(f"{module}:")
    assert f"imports {expected} " in found[0]


def test_stages_may_use_the_contracts_the_bus_and_the_store(tmp_path: Path) -> None:
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "ingest" / "ok.py").write_text(
        "import json\nfrom schemas import topics\nfrom bus import Bus\nimport store\n"
        "from ingest import codec\n"
    )
    (tmp_path / "store" / "ok.py").write_text("from bus.aio import wait_at_most\n")
    assert violations(tmp_path) == []
