"""Layering check: walks gie's imports (module level and lazy) and fails on a cycle or an upward import.

Dependencies run one way, from high layers to low ones::

    cli, tools -> benchmark -> editing -> methods -> {alignment, synth} -> training -> {weights, metrics}
        -> models -> {io, ops, device} -> {errors, settings, catalog, registries}

A module may import its own package and any package on a lower layer; a method's ``train`` module sits on the
``editing`` layer (SFE's phase 2 trains on edit directions; only training users import it). Two more rules: inference
code never imports training code (``training`` or a ``train`` module), and no module imports a private (``_name``)
helper from another module (a package's ``__init__`` may re-export its own modules' names).

Run ``python -m gie_cli.tools.layering`` (exit 1 with one line per violation) or call :func:`check`.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "gie_cli"

#: top-level subpackage (or module) -> layer; a module may import only its own package or lower layers.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "errors": 0,
    "settings": 0,
    "catalog": 0,
    "io": 1,
    "ops": 1,
    "device": 1,
    "models": 2,
    "weights": 3,
    "metrics": 3,
    "training": 4,
    "alignment": 5,
    "synth": 5,
    "methods": 6,
    "editing": 7,
    "benchmark": 8,
    "cli": 9,
    "__main__": 9,
    "tools": 9,
}

#: layers allowed to import training code (everything else is inference).
TRAINING_USERS = {"training", "cli", "__main__", "tools"}


@dataclass
class Report:
    """What :func:`check` found: the import graph and every violation, one line each."""

    graph: dict[str, set[str]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_package(root: Path, module: str) -> bool:
    return (root.parent.joinpath(*module.split(".")) / "__init__.py").is_file()


def _is_training(module: str) -> bool:
    parts = module.split(".")
    return (len(parts) > 1 and parts[1] == "training") or parts[-1] == "train"


def _layer(module: str) -> int:
    """The layer of ``module``: its package's, but a method's trainer (``methods.<name>.train``) is on ``editing``'s."""
    top = _top(module)
    if top == "methods" and module.split(".")[-1] == "train":
        return LAYERS["editing"]
    return LAYERS[top]


def scan(root: Path) -> dict[str, list[tuple[str, int, list[str]]]]:
    """Every import of every module under ``root``: ``module -> [(imported module, line, imported names)]``."""
    modules = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    out: dict[str, list[tuple[str, int, list[str]]]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges: list[tuple[str, int, list[str]]] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                if target.split(".")[0] != PACKAGE:
                    continue
                names = [a.name for a in node.names]
                # `from pkg import submodule` depends on the submodule itself
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                rest = [n for n in names if f"{target}.{n}" not in modules]
                edges += [(s, node.lineno, []) for s in subs]
                if rest or not subs:
                    edges.append((target, node.lineno, rest))
        out[mod] = edges
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def check(root: Path | None = None) -> Report:
    """Check the package at ``root`` (default: the installed ``gie_cli``) against :data:`LAYERS`."""
    root = root or Path(__file__).resolve().parents[1]
    imports = scan(root)
    report = Report()
    for mod, edges in imports.items():
        src_top = _top(mod)
        if src_top not in LAYERS:
            report.violations.append(f"{mod}: package {src_top!r} has no layer in gie_cli.tools.layering.LAYERS")
            continue
        for target, line, names in edges:
            # an import of a package's face (`from gie_cli.methods import x`) counts as an import of that package
            while target not in imports and "." in target:
                target = target.rsplit(".", 1)[0]
            if target == mod:
                continue
            report.graph.setdefault(mod, set()).add(target)
            dst_top = _top(target)
            where = f"{mod} (line {line}) imports {target}"
            if dst_top != src_top and LAYERS.get(dst_top, 99) > _layer(mod):
                report.violations.append(f"{where}: upward import ({src_top} -> {dst_top})")
            if _is_training(target) and not _is_training(mod) and src_top not in TRAINING_USERS:
                report.violations.append(f"{where}: inference code imports training code")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            own_package = mod == target.rsplit(".", 1)[0] and imports.get(mod) is not None and _is_package(root, mod)
            if private and not own_package:
                report.violations.append(f"{where}: private name(s) {', '.join(private)} from another module")
    for comp in _cycles(report.graph):
        report.violations.append(f"import cycle of {len(comp)} modules: {' -> '.join(comp)}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Print the violations (one per line) and return 1 if there are any."""
    report = check(Path(argv[0]) if argv else None)
    for line in report.violations:
        print(line)
    n_edges = sum(len(v) for v in report.graph.values())
    print(
        f"layering: {len(report.graph)} modules, {n_edges} imports, {len(report.violations)} violation(s)",
        file=sys.stderr,
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
