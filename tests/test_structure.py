"""The package's shape: stages that import downwards only, small modules, task rules in tasks/."""
import ast
from pathlib import Path

import pytest

from harness.tasks import TASKS, TaskType

PACKAGE = Path(__file__).resolve().parents[1] / "harness"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set:
    """The harness modules `path` imports, at the top or inside functions (not for type checkers)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    me = module_name(path).split(".")
    base = me if path.name == "__init__.py" else me[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = node.module if not node.level else ".".join(
                base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            if target and target.startswith("harness"):
                out.update(f"{target}.{a.name}" for a in node.names)
                out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("harness"))
    return out


def modules() -> dict:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_import_circle():
    mods = modules()
    graph = {m: {t for t in imports(p) if t in mods and t != m} for m, p in mods.items()}
    # a package's __init__ re-exports its modules: importing the package is importing them
    state = {}

    def visit(m, trail):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open" and not m.startswith(t + ".") and not t.startswith(m + "."):
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(t):] + [t]))
            if t not in state:
                visit(t, trail + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_module_over_300_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 300}
    assert not long


def test_task_rules_live_with_the_tasks():
    outside = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if "tasks" not in p.parts
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if "task ==" in line or "task !=" in line]
    assert not outside


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_implements_the_protocol(name):
    task_type = TASKS.get(name)
    assert issubclass(task_type, TaskType)
    for method in ("check_spec", "label_classes", "build", "submission_columns", "predict", "score", "labels",
                   "nll", "loss", "train_dataset", "load_images", "suggest_model", "fit_cutoffs"):
        assert callable(getattr(task_type, method, None)), f"{name} lacks {method}"
    assert task_type.build is not TaskType.build and task_type.label_classes is not TaskType.label_classes
