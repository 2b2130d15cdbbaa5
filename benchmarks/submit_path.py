"""make_submission's data path, read from the code: which modules the run reaches, and how often the
path climbs back up the stages.

    python benchmarks/submit_path.py                 # this tree
    python benchmarks/submit_path.py --root OTHER    # another checkout, e.g. an older commit
    python benchmarks/submit_path.py --whole         # into every stage's internals too

How it counts (statically, from the source): start at `submit.submission.make_submission(run)` and
follow every call that passes the run or a value read from it (`run.spec`, `run.paths`, ...) into
the function that receives it, with the parameter that receives it; a registry call
(`FORMATS.get(name)(...)`) is followed into every function registered there. Inside submit every
function is followed; a call into another stage counts that stage's entry module and stops there
(its internals are its own business), unless `--whole`. The walk goes down into each callee and
back to its caller; a climb is a step of that walk into a later stage than the step before. The
foundation (registry, errors, files) is left out: every stage calls it.

Prints one JSON object: the modules in the order first reached, their count, and the climbs.
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

STAGES = ["config", "tasks", "data", "training", "search", "submit", "preflight", "cli"]


class Code:
    """The harness package's syntax trees, and the names each module defines or imports."""

    def __init__(self, package: Path) -> None:
        self.package = package
        self.files = {self._name(p): p for p in package.rglob("*.py")}
        self.trees = {m: ast.parse(p.read_text()) for m, p in self.files.items()}

    def _name(self, path: Path) -> str:
        parts = path.relative_to(self.package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def _source(self, module: str, node: ast.ImportFrom) -> Optional[str]:
        base = module.split(".") if self.files[module].name == "__init__.py" else module.split(".")[:-1]
        if node.level:
            return ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
        return node.module

    def names(self, module: str) -> Dict[str, Tuple[str, str]]:
        """name → (module, name) for what `module` defines or imports from the package."""
        out = {}
        for node in self.trees.get(module, ast.Module(body=[])).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign)):
                for name in ([node.name] if not isinstance(node, ast.Assign) else
                             [t.id for t in node.targets if isinstance(t, ast.Name)]):
                    out[name] = (module, name)
            elif isinstance(node, ast.ImportFrom):
                source = self._source(module, node)
                if source and source.startswith("harness"):
                    out.update({a.asname or a.name: (source, a.name) for a in node.names})
        return out

    def home(self, module: str, name: str, seen: frozenset = frozenset()) -> Tuple[str, Optional[ast.AST]]:
        """(the module that defines `name`, its definition), following re-exports."""
        for node in self.trees.get(module, ast.Module(body=[])).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return module, node
            if isinstance(node, ast.ClassDef) and node.name == name:
                return module, next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                                    None)
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return module, None
        target = self.names(module).get(name)
        if target and target[0] != module and (module, name) not in seen and f"{target[0]}.{target[1]}" not in self.files:
            return self.home(target[0], target[1], seen | {(module, name)})
        return module, None


def stage(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else -1


def carries(expr: ast.AST, names: Set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(expr))


class Walk:
    def __init__(self, code: Code, whole: bool) -> None:
        self.code, self.whole = code, whole
        self.order: List[str] = []
        self.steps: List[str] = []
        self.done: Set[tuple] = set()

    def follow(self, module: str, fn: ast.FunctionDef, params: Set[str], home_stage: int) -> None:
        key = (module, fn.name, tuple(sorted(params)))
        self.steps.append(module)
        if module not in self.order:
            self.order.append(module)
        if key in self.done:
            return
        self.done.add(key)
        names = self.code.names(module)
        for call in ast.walk(fn):
            if not isinstance(call, ast.Call):
                continue
            args = [i for i, a in enumerate(call.args) if carries(a, params)]
            kws = {k.arg for k in call.keywords if k.arg and carries(k.value, params)}
            if args or kws:
                for target in self._targets(call.func, names):
                    self._enter(module, target, args, kws, home_stage)

    def _targets(self, func: ast.AST, names: Dict[str, Tuple[str, str]]) -> List[Tuple[str, ast.FunctionDef]]:
        if isinstance(func, ast.Name) and func.id in names:
            found = self.code.home(*names[func.id])
            return [found] if found[1] is not None else []
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in names:
            source = ".".join(names[func.value.id])
            if source in self.code.files:  # module.function(...)
                found = self.code.home(source, func.attr)
                return [found] if found[1] is not None else []
        if (isinstance(func, ast.Call) and isinstance(func.func, ast.Attribute) and func.func.attr == "get"
                and isinstance(func.func.value, ast.Name) and func.func.value.id in names):
            registry_module, registry = self.code.home(*names[func.func.value.id])[0], func.func.value.id
            return [(registry_module, node) for node in self.code.trees[registry_module].body
                    if isinstance(node, ast.FunctionDef) and any(
                        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)
                        and isinstance(d.func.value, ast.Name) and d.func.value.id == registry
                        for d in node.decorator_list)]
        return []

    def _enter(self, caller: str, target: Tuple[str, ast.FunctionDef], args: List[int], kws: Set[str],
               home_stage: int) -> None:
        module, fn = target
        params = [a.arg for a in fn.args.args]
        params = params[1:] if params and params[0] in ("self", "cls") else params
        received = {params[i] for i in args if i < len(params)} | (kws & set(params))
        if not received:
            return
        if self.whole or stage(module) == home_stage:
            self.follow(module, fn, received, home_stage)
        else:  # another stage's entry
            self.steps.append(module)
            if module not in self.order:
                self.order.append(module)
        self.steps.append(caller)


def submit_path(root: Path, whole: bool = False) -> dict:
    """The modules make_submission's run reaches (stages only) and the climbs of the walk."""
    code = Code(root / "harness")
    start = code.home("harness.submit.submission", "make_submission")
    walk = Walk(code, whole)
    walk.follow(start[0], start[1], {"run"}, stage(start[0]))
    steps = [m for m in walk.steps if stage(m) >= 0]
    steps = [m for i, m in enumerate(steps) if i == 0 or steps[i - 1] != m]
    climbs = [f"{a} -> {b}" for a, b in zip(steps, steps[1:]) if stage(b) > stage(a)]
    modules = [m for m in walk.order if stage(m) >= 0]
    return {"modules": len(modules), "climbs": len(climbs), "path": modules, "climbed": climbs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--whole", action="store_true", help="follow into every stage's internals")
    args = parser.parse_args()
    print(json.dumps(submit_path(Path(args.root), args.whole), indent=1))


if __name__ == "__main__":
    main()
