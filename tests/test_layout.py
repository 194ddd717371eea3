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
        if name.startswith(("edgepipe.tasks", "edgepipe.stages", "edgepipe.build")):
            assert not deps & {"edgepipe.pipeline", "edgepipe.cli"}, name
        if name.startswith(("edgepipe.stages", "edgepipe.graph", "edgepipe.build")):
            assert not any(d.startswith("edgepipe.tasks") for d in deps), name
        if name.startswith(("edgepipe.stages", "edgepipe.graph", "edgepipe.bench")):
            assert not any(d.startswith("edgepipe.build") for d in deps), name
        if name.startswith("edgepipe.runtime"):
            assert all(d.startswith("edgepipe.runtime") for d in deps), name


def test_modules_are_small():
    sizes = {
        _module(p): len(p.read_text(encoding="utf-8").splitlines()) for p in ROOT.rglob("*.py")
    }
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_every_task_kind_is_registered_once_under_its_names():
    from edgepipe.config import KIND_METRICS, TASK_KINDS
    from edgepipe.families import EXPORT_TASKS
    from edgepipe.tasks import TASKS

    assert set(TASKS) == set(KIND_METRICS) == set(TASK_KINDS.values())
    for kind, module in TASKS.items():
        assert kind == module.KIND and TASK_KINDS[module.NAME] == kind
        assert module.NAME in EXPORT_TASKS and callable(module.run) and module.EXAMPLE
