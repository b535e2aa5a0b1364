"""The import layers: which package may import which, read from the source, not from a diagram.

Every module of ``sdnctl`` and ``agent`` is parsed (``ast``) and each of its imports, at the top
or inside a function, is checked against :data:`LAYERS`. A new edge that breaks a layer fails
here, naming the module, the line and the import; so does any import cycle between our modules
(even one hidden in a function), and any import inside a function outside the composition root.
docs/architecture.md explains the table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("sdnctl", "agent")

#: unit -> what it may import besides itself (a unit or a single module, by dotted prefix).
#: The longest unit that prefixes a module's name is its unit.
LAYERS: dict[str, tuple[str, ...]] = {
    "sdnctl.v1": (),  # generated protobuf code
    "sdnctl.api": ("sdnctl.v1",),  # the shared vocabulary
    "sdnctl.controller": ("sdnctl.api", "sdnctl.v1"),
    # The CNI plugin is a process per call: standard library only (and the agent's wire).
    "sdnctl.cni": (),
    "agent": ("sdnctl.api", "sdnctl.v1", "sdnctl.cni"),
    "sdnctl.lab": ("sdnctl.api", "sdnctl.v1", "agent"),
    # deploy: `up` first runs the controller's own State in-process over a copy (the dry run)
    "sdnctl.topology": ("sdnctl.api", "sdnctl.v1", "sdnctl.lab", "agent", "sdnctl.controller"),
    "sdnctl.cli": ("sdnctl.api", "sdnctl.v1", "sdnctl.topology", "sdnctl.lab", "agent.names"),
    "sdnctl.main": ("sdnctl.cli", "sdnctl.controller", "agent"),  # the composition root
}
#: The only modules that may import our code inside a function (lazily, not to dodge a cycle:
#: the cycle test sees these imports too), and what they may import so: the composition root
#: anything; the CLI's verb modules what only some of their verbs need, so that a CLI start
#: does not pay for it (sdnctl.cli.everyday's note).
LAZY_IMPORTS_ALLOWED: dict[str, tuple[str, ...]] = {
    "sdnctl.main": ("",),
    "sdnctl.cli.verbs": ("sdnctl.lab.local",),
    "sdnctl.cli.listing": ("sdnctl.lab.local",),
    "sdnctl.cli.imagecli": ("sdnctl.lab.local", "sdnctl.api.imagepull", "sdnctl.api.registry",
                            "sdnctl.api.imagefmt"),
    # cryptography, for what few runs need: the lab's registry, and the pki verb
    "sdnctl.lab.registry": ("sdnctl.lab.labtls",),
    "sdnctl.cli.cli": ("sdnctl.api.pki",),
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    found = {}
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The module an import lands on: the longest known module prefixing ``name``."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _walk(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(tree):
        inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef |
                                          ast.Lambda)
        yield child, inner
        yield from _walk(child, inner)


def edges_of(source: str, tree: ast.AST, modules: dict[str, Path]) -> list[Edge]:
    found = []
    for node, in_function in _walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import mod`` imports pkg.mod when that is a module, else a name of pkg
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                       else node.module for alias in node.names]
        for target in targets:
            if target.split(".")[0] in OURS:
                found.append(Edge(source, _resolve(target, modules), node.lineno, in_function))
    return found


def all_edges(modules: dict[str, Path]) -> list[Edge]:
    edges = []
    for name, path in modules.items():
        edges += edges_of(name, ast.parse(path.read_text(), str(path)), modules)
    return edges


def unit_of(module: str) -> str:
    units = [u for u in LAYERS if _within(module, u)]
    if not units:
        raise AssertionError(f"{module} is in no unit of LAYERS: add it to the table")
    return max(units, key=len)


def layer_violations(edges: list[Edge]) -> list[str]:
    bad = []
    for e in edges:
        source_unit, target_unit = unit_of(e.source), unit_of(e.target)
        if source_unit == target_unit:
            continue
        if not any(_within(e.target, allowed) for allowed in LAYERS[source_unit]):
            bad.append(f"{e.source}:{e.line} imports {e.target} ({source_unit} may import only "
                       f"{', '.join(LAYERS[source_unit]) or 'nothing of ours'})")
    return bad


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.source != e.target:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checks_catch_what_they_should() -> None:
    """Positive control: a made-up cycle, a layer break and a lazy import are all reported."""
    modules = {"sdnctl.api.model": Path("m"), "sdnctl.api.paths": Path("p"),
               "sdnctl.controller.state": Path("s")}
    model = ast.parse("from sdnctl.controller import state\n")
    paths = ast.parse("def f():\n    from sdnctl.api import model\n")
    state = ast.parse("import sdnctl.api.paths\n")
    edges = (edges_of("sdnctl.api.model", model, modules)
             + edges_of("sdnctl.api.paths", paths, modules)
             + edges_of("sdnctl.controller.state", state, modules))
    assert [e.in_function for e in edges] == [False, True, False]
    assert layer_violations(edges) == [
        "sdnctl.api.model:1 imports sdnctl.controller.state (sdnctl.api may import only "
        "sdnctl.v1)"]
    assert cycles(edges) == [["sdnctl.api.model", "sdnctl.api.paths", "sdnctl.controller.state"]]


def test_every_module_is_in_a_unit() -> None:
    for name in our_modules():
        if name not in OURS:
            unit_of(name)


def test_no_import_breaks_a_layer() -> None:
    assert layer_violations(all_edges(our_modules())) == []


def test_no_import_cycle() -> None:
    assert cycles(all_edges(our_modules())) == []


def test_no_import_inside_a_function_except_in_the_composition_root() -> None:
    lazy = [f"{e.source}:{e.line} imports {e.target}" for e in all_edges(our_modules())
            if e.in_function and not e.target.startswith(LAZY_IMPORTS_ALLOWED.get(e.source, ()))]
    assert lazy == []
