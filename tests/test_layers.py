"""The library's layers: the core never imports a stage module, no module imports another
in a cycle, and stage folder names are spelled in the stage registry only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from synergy import stages

LIB = Path(__file__).resolve().parents[1] / "lib" / "synergy"
STAGE_MODULES = ({s.module for s in stages.STAGES} - {"world"}  # world: the core's task
                 | {"grpo_analysis"}  # 04's analysis
                 | {"evidence", "findings", "report_figures", "report_roles"})  # the report stage
MODULES = {p.stem: p for p in LIB.glob("*.py") if p.stem not in ("__init__", "__main__")}
CORE = set(MODULES) - STAGE_MODULES - {"pipeline"}


def imports(path: Path) -> set[str]:
    """synergy modules a file imports at run time (at any depth: lazy imports count too;
    annotations-only imports under `if TYPE_CHECKING` do not)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "synergy":
                found |= {a.name for a in node.names}
            elif node.module.startswith("synergy."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("synergy.")}
    return found & set(MODULES)


def test_the_core_imports_no_stage_module():
    assert CORE >= {"config", "runs", "stages", "models", "generation", "evaluation", "verify",
                    "data", "row_rules", "training", "scoring", "world", "task"}
    bad = {m: sorted(imports(MODULES[m]) & STAGE_MODULES) for m in CORE}
    assert {m: b for m, b in bad.items() if b} == {}


def test_no_import_cycle():
    graph = {m: imports(p) - {m} for m, p in MODULES.items()}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [m for m in graph if m in reach(m)]
    assert cycles == [], {m: graph[m] for m in cycles}


def string_literals(path: Path) -> list[str]:
    """The string constants of a module's code (docstrings, which only illustrate, left out)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs]


def test_stage_folder_names_are_spelled_in_the_registry_only():
    folder = re.compile(r"\b0\d_[a-z_]+")
    hits = {p.stem: found for p in LIB.glob("*.py") if p.stem != "stages"
            for found in [[m for s in string_literals(p) for m in folder.findall(s)]] if found}
    assert hits == {}
