"""The package keeps three layers: foundation <- engines <- commands (issue #14).

Read from the source with :mod:`ast` (nothing under test is imported but
``axpack.cli`` for its ``COMMANDS`` table, which imports click only), every
``from .x import``, ``from axpack.x import``, ``import axpack.x`` and
``from . import x`` of ``tools/axpack`` — at module level or inside a
function — is an edge. The test fails on

(a) a command module importing another command module (cli.COMMANDS' values),
(b) a name starting with ``_`` imported from (or read as an attribute of)
    another axpack module,
(c) an engine or foundation module importing a command,
(d) a foundation module importing anything but foundation modules,

unless the violation is in KNOWN below, each with who removes it. A KNOWN
entry that no longer occurs also fails: the list can only shrink. Cost: well
about half a second (some 45 files parsed once).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from axpack.cli import COMMANDS
from conftest import ROOT

PKG = ROOT / "tools" / "axpack"
# errors, environment, filesystem, config access, cards, record keys, run-folder names,
# the JSON record reader, the data-run skeleton, formatting, rule tables:
# these import only each other ("" is the package's own __init__)
FOUNDATION = frozenset({"", "errors", "env", "fsutil", "config", "cards", "cpu", "record_keys", "runs",
                        "records", "datarun", "formatting", "rules"})

# (importer, imported) -> who removes the edge; empty since the #14 restructuring. A
# violation that must stay for a while goes here with its owner, and the list only shrinks.
KNOWN_EDGES: dict[tuple[str, str], str] = {}
# (importer, imported, name) -> who removes the private import
KNOWN_PRIVATE: dict[tuple[str, str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Dotted name under axpack ("" for the package) -> file, for every module of every package folder."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        folders = [d for d in [path.parent, *path.parent.parents] if d == PKG or PKG in d.parents]
        if not all((d / "__init__.py").is_file() for d in folders):
            continue  # e.g. cpu_site/sitecustomize.py: a child process's path entry, not part of the package
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(name: str) -> str:
    """The package a module's relative imports start from ("" is axpack itself)."""
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _resolve(importer: str, node: ast.ImportFrom) -> str | None:
    """The dotted axpack module a ``from ... import`` names, or None when outside axpack."""
    if node.level:
        base = _package_of(importer).split(".") if _package_of(importer) else []
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + (node.module.split(".") if node.module else []))
    if node.module == "axpack":
        return ""
    if node.module and node.module.startswith("axpack."):
        return node.module[len("axpack."):]
    return None


def _owner(name: str) -> str:
    """The nearest existing module of a dotted name (``x.y`` -> ``x`` when ``y`` is a name in ``x``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


@functools.cache
def import_graph() -> tuple[frozenset[tuple[str, str]], frozenset[tuple[str, str, str]]]:
    """(edges ``(importer, imported)``, private uses ``(importer, module, name)``) of the package."""
    edges: set[tuple[str, str]] = set()
    private: set[tuple[str, str, str]] = set()
    for name, path in MODULES.items():
        aliases: dict[str, str] = {}  # local name bound to an axpack module -> that module
        nodes = list(ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))))
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                target = _resolve(name, node)
                if target is None:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}".lstrip(".")
                    if sub in MODULES:  # from . import verify / from .plan import memory
                        edges.add((name, sub))
                        aliases[alias.asname or alias.name] = sub
                    else:
                        edges.add((name, _owner(target)))
                        if alias.name.startswith("_") and not alias.name.endswith("__"):
                            private.add((name, _owner(target), alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("axpack."):
                        mod = _owner(alias.name[len("axpack."):])
                        edges.add((name, mod))
                        if alias.asname:
                            aliases[alias.asname] = mod
        for node in nodes:
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.endswith("__")):
                private.add((name, aliases[node.value.id], node.attr))
    return frozenset((a, b) for a, b in edges if a != b), frozenset(p for p in private if p[0] != p[1])


def violations() -> tuple[dict[tuple[str, str], str], frozenset[tuple[str, str, str]]]:
    """The layer violations of the package now: edge -> rule broken, and private uses."""
    # the plan package's click command lives in plan.cmd (its __init__ hands it out lazily)
    commands = set(COMMANDS.values()) | {"plan.cmd"}
    edges, private = import_graph()
    bad: dict[tuple[str, str], str] = {}
    for a, b in sorted(edges):
        if b.startswith(a + "."):
            continue  # a package handing out its own submodule (plan -> plan.cmd)
        if a in commands and b in commands:
            bad[(a, b)] = "command imports command"
        elif b in commands:
            bad[(a, b)] = "engine/foundation imports a command"
        elif a in FOUNDATION and b not in FOUNDATION:
            bad[(a, b)] = "foundation imports an engine"
    return bad, private


def test_the_graph_is_read():
    """The reader sees real edges, including imports inside functions (so a
    test that finds nothing cannot pass by reading nothing)."""
    edges, _ = import_graph()
    assert set(COMMANDS.values()) <= set(MODULES)
    assert ("smoke_run", "shape_twin") in edges  # a function-level import in cpu_model
    assert ("smoke", "smoke_run") in edges and ("config", "errors") in edges


def test_no_new_layer_violation():
    bad, private = violations()
    new = [f"{a} -> {b}: {why}; move the shared piece down (foundation <- engines <- commands)"
           for (a, b), why in bad.items() if (a, b) not in KNOWN_EDGES]
    new += [f"{a} imports {n} from {m}: private; make it public in a lower module"
            for a, m, n in sorted(private) if (a, m, n) not in KNOWN_PRIVATE]
    assert not new, "\n".join(new)


def test_known_list_only_shrinks():
    """A KNOWN entry whose violation is gone must be deleted (so the list cannot hide a new one)."""
    bad, private = violations()
    stale = [f"KNOWN_EDGES {k} ({who}) no longer occurs: delete it" for k, who in KNOWN_EDGES.items()
             if k not in bad]
    stale += [f"KNOWN_PRIVATE {k} ({who}) no longer occurs: delete it" for k, who in KNOWN_PRIVATE.items()
              if k not in private]
    assert not stale, "\n".join(stale)


def test_child_process_targets_exist():
    """``llama_child.run_isolated("axpack.mod:func", ...)`` names its work function in a string,
    which the import graph cannot see: each must name a module of the package that defines it."""
    import re

    bad = []
    for path in sorted([*PKG.rglob("*.py"), *(ROOT / "bench").glob("*.py")]):
        for mod, func in re.findall(r'"axpack\.([a-z_.]+):([a-z_]+)"', path.read_text(encoding="utf-8")):
            target = MODULES.get(mod)
            defined = target is not None and any(
                isinstance(n, ast.FunctionDef) and n.name == func for n in ast.parse(target.read_text()).body)
            if not defined:
                bad.append(f"{path.relative_to(ROOT)}: axpack.{mod}:{func} is not a function of that module")
    assert not bad, "\n".join(bad)
