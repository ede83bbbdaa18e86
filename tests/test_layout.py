"""The package's layout stays readable: no import cycles between optjax's modules, no private
(underscore) name imported from another module, no source file over 400 lines, and the engine
never imports a model family (a family depends on the engine, not the other way round)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "optjax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _executed(tree):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _executed(node)


def _imports(name: str):
    """(imported module, imported names) for every import in module ``name``, at any depth."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in _executed(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = tuple(a.name for a in node.names)
            plain = tuple(n for n in names if f"{base}.{n}" not in MODULES)
            if plain:  # names defined in ``base`` itself
                yield base, plain
            for n in names:
                if f"{base}.{n}" in MODULES:  # ``from package import submodule``
                    yield f"{base}.{n}", ()


def _graph():
    graph = {}
    for name in MODULES:
        deps = set()
        for target, _ in _imports(name):
            while target and target not in MODULES:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name and target.startswith("optjax"):
                deps.add(target)
        graph[name] = deps
    return graph


def test_no_import_cycles():
    """Module A imports B (at any depth, functions included) and B imports A, directly or
    through others: none. (Python's implicit import of a package's __init__ before its
    submodules is not an edge.)"""
    graph = _graph()
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "active"
        for dep in sorted(graph[node]):
            if state.get(dep) == "active":
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for name in MODULES:
        for target, names in _imports(name):
            if not target.startswith("optjax"):
                continue
            offenders += [f"{name} imports {target}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
            last = target.rsplit(".", 1)[-1]
            if last.startswith("_") and not last.startswith("__") and target in MODULES:
                offenders.append(f"{name} imports the private module {target}")
    assert not offenders, offenders


def test_no_source_file_over_400_lines():
    files = list(PACKAGE.rglob("*.py")) + list((ROOT / "tests").rglob("*.py")) + \
        list((ROOT / "benchmarks").glob("*.py"))
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_engine_imports_no_family():
    graph = _graph()
    engine = [m for m in graph if m.startswith("optjax.engine")]
    wrong = {m: sorted(d for d in graph[m] if d.startswith(("optjax.families", "optjax.nn")))
             for m in engine}
    assert not any(wrong.values()), wrong


def test_test_only_packages_stay_out_of_the_library():
    """chex and pytest are the test suite's (the dev extra), so no optjax module imports them;
    jaxopt is imported by its adapter only (tests/test_import.py runs optjax without it)."""
    wrong = {}
    for name in MODULES:
        bad = sorted({t for t, _ in _imports(name)
                      if t.split(".")[0] in ("chex", "pytest", "hypothesis")
                      or (t.split(".")[0] == "jaxopt"
                          and name != "optjax.solvers.jaxopt_adapter")})
        if bad:
            wrong[name] = bad
    assert not wrong, wrong
