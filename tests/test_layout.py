"""The package's shape: no import circle, no upward import, no module over the line budget."""

import ast
from pathlib import Path

import edgepipe

ROOT = Path(edgepipe.__file__).parent
MAX_LINES = 420  # "aim under ~400"; a module past this is due for a split


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every edgepipe module -> the edgepipe modules it imports (in functions too)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {  # imports for annotations alone are no circle at run time
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_circle():
    graph = _imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(name) :] + [name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_upward_imports():
    graph = _imports()
    for name, deps in graph.items():
        if name.startswith(("edgepipe.tasks", "edgepipe.stages", "edgepipe.engine")):
            assert not deps & {"edgepipe.pipeline", "edgepipe.cli"}, name
        if name.startswith(("edgepipe.stages", "edgepipe.graph", "edgepipe.engine")):
            assert not any(d.startswith("edgepipe.tasks") for d in deps), name
        if name.startswith(("edgepipe.stages", "edgepipe.graph", "edgepipe.bench")):
            assert not any(d.startswith("edgepipe.engine") for d in deps), name
        if name.startswith("edgepipe.runtime"):
            assert all(d.startswith("edgepipe.runtime") for d in deps), name


# Each part (a folder of edgepipe/, or a top-level module) -> the parts it may import. Read down the
# table: nothing imports a part below it in this list, so the engine can never reach into the CLI, and
# the runtime (which ships in every bundle) imports nothing but itself.
_BASE = {"errors", "runtime"}
MAY_IMPORT: dict[str, set[str]] = {
    "runtime": set(),
    "errors": set(),
    "cache": {"runtime"},
    "catalog": _BASE,
    "graph": _BASE | {"catalog"},
    "bench": _BASE | {"cache"},
    "sources": _BASE | {"cache", "catalog"},
    "stages": _BASE | {"bench", "cache", "catalog", "graph"},
    "trust": _BASE | {"edgepipe", "graph", "stages"},  # edgepipe: __version__
    "fleet": _BASE | {"edgepipe", "cache", "trust"},
    "engine": _BASE | {"edgepipe", "cache", "catalog", "graph", "sources", "stages", "trust"},
    "tasks": _BASE | {"catalog", "engine", "graph", "stages"},
    "pipeline": _BASE | {"catalog", "engine", "sources", "stages", "tasks"},
    "cli": _BASE | {"edgepipe", "bench", "cache", "catalog", "engine", "fleet", "pipeline", "sources", "stages", "trust"},
    "__main__": {"cli"},
}
# What stays loose at the top of edgepipe/: what every part uses, the build itself and the entry point.
TOP_LEVEL = {"__init__", "__main__", "errors", "cache", "pipeline"}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edgepipe"


def test_parts_import_only_the_parts_below_them():
    wrong = sorted(
        f"{name} imports {dep}"
        for name, deps in _imports().items()
        for dep in deps
        if _part(dep) != _part(name) and _part(dep) not in MAY_IMPORT.get(_part(name), set())
    )
    assert wrong == []


def test_the_top_level_holds_only_what_every_part_uses():
    loose = {p.stem for p in ROOT.glob("*.py")}
    assert loose == TOP_LEVEL
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} <= set(MAY_IMPORT)


def test_modules_are_small():
    sizes = {_module(p): len(p.read_text(encoding="utf-8").splitlines()) for p in ROOT.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_every_task_kind_is_registered_once_under_its_names():
    from edgepipe.catalog.config import KIND_METRICS
    from edgepipe.catalog.families import EXPORT_TASKS
    from edgepipe.runtime.tasks import Task
    from edgepipe.tasks import TASKS

    assert set(TASKS) == set(KIND_METRICS) == set(Task)
    for kind, spec in TASKS.items():
        assert kind == spec.kind and Task.parse(kind.manifest_name) == kind
        assert kind in EXPORT_TASKS and callable(spec.run) and spec.example
