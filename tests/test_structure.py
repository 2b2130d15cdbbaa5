"""The package's shape: stages that import downwards only, small modules, task rules in tasks/."""
import ast
import importlib.util
import inspect
from pathlib import Path

import pytest

from harness.tasks import TASKS, Task

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


# the stages in the order the data flows, bottom first: a package imports only packages below it
LAYERS = [("registry", "errors", "files", "lazy"), ("config",), ("tasks",), ("data",), ("training",), ("search",),
          ("submit",), ("preflight",), ("cli", "__main__", "")]


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if top in names)


def import_graph() -> dict:
    mods = modules()
    return {m: {t for t in imports(p) if t in mods and t != m} for m, p in mods.items()}


def upward_imports(graph: dict) -> list:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer(t) > layer(m))


def test_packages_import_only_packages_below_them():
    """The stage order as a rule, function-local imports included: config < tasks < data < training <
    search < submit < preflight < cli; a module may import its own package and those below."""
    upward = upward_imports(import_graph())
    assert not upward, "imports against the stage order:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = import_graph()
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


def test_the_structural_check_sees_imports_inside_functions(tmp_path, monkeypatch):
    probe = tmp_path / "harness" / "tasks" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import numpy\n\ndef f():\n    from ..training import fit\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "harness")
    found = imports(probe)
    assert "harness.training" in found
    assert upward_imports({"harness.tasks.probe": found}) == ["harness.tasks.probe -> harness.training",
                                                             "harness.tasks.probe -> harness.training.fit"]


def test_no_harness_import_inside_a_function():
    """A stage's dependencies are said at the top of its modules, where the order test reads them; an
    import inside a function is how an upward dependency hid before."""
    hidden = [f"{p.relative_to(PACKAGE)}:{n.lineno}" for p in PACKAGE.rglob("*.py")
              for f in ast.walk(ast.parse(p.read_text())) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("harness"))]
    assert not hidden


def test_no_module_over_300_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 300}
    assert not long


def test_task_rules_live_with_the_tasks():
    outside = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if "tasks" not in p.parts
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if "task ==" in line or "task !=" in line]
    assert not outside


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_implements_the_interface(name):
    """A task is a `Task` with nothing abstract left, traits the other stages read, and its rules."""
    task = TASKS.get(name)
    assert issubclass(task, Task) and not inspect.isabstract(task)
    for trait in ("masks_are_labels", "trains_on_whole_images", "writes_probability", "mask_submission"):
        assert isinstance(getattr(task, trait), bool), f"{name}.{trait}"
    assert task.families and task.metrics.names() and task.losses.names()
    for method in ("check", "label_classes", "submission_columns"):
        assert callable(getattr(task.rules, method, None)), f"{name}'s rules lack {method}"


def test_no_task_or_model_family_is_named_outside_tasks_and_the_model_factory():
    """Other stages read the tasks' traits; the model family is decided in training/models.py only."""
    names = [f'"{n}"' for n in TASKS.names()] + ['"timm_classifier"', '"timm_aux_mask"', '"smp"', '"smp_mask_score"']
    allowed = {PACKAGE / "training" / "models.py", PACKAGE / "training" / "config.py"}  # config: the default family
    outside = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if "tasks" not in p.parts
               and p not in allowed for i, line in enumerate(p.read_text().splitlines(), 1)
               if any(n in line for n in names)]
    assert not outside


def test_make_submissions_data_path_is_short():
    """make_submission reaches each lower stage once, through its entry module (benchmarks/submit_path.py
    says how it counts); the whole walk stays within a few climbs."""
    spec = importlib.util.spec_from_file_location("submit_path", PACKAGE.parent / "benchmarks" / "submit_path.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    path = tool.submit_path(PACKAGE.parent)
    assert path["modules"] <= 10 and path["climbs"] <= 4, path
    assert {"harness.data.prepare", "harness.search.storage", "harness.training.predict"} <= set(path["path"])
