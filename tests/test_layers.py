"""The project's import structure: no cycles, no private names across modules, layers import downward only.

Every module of the project packages is parsed (AST, nothing is imported) and every ``import`` statement in
it is read, at module level and inside functions alike: a lazy import is still a dependency. The layers,
lowest first:

    udfs                          the domain core: pure Python and the Flink adapters
    riskstream (base modules)     paths, config, job flags, topics, metrics, generator, Kafka I/O
    riskstream.ops                the local broker, the standalone cluster, submission, Flink REST, jars
    pipelines                     builds the Flink job
    riskstream.tools, benchmarks, models
                                  audit, chaos, demo, report; the bench; training
    riskstream.cli                the command line, on top; imported by no module (entry points aside)

A module may import its own layer or a lower one, never a higher one. A name starting with one underscore
is private to its module (and a module starting with one is private to its package).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("udfs", "riskstream", "pipelines", "benchmarks", "models")

# (module prefix, layer); the longest matching prefix wins
LAYERS = (
    ("udfs", 0),
    ("riskstream", 1),
    ("riskstream.ops", 2),
    ("pipelines", 3),
    ("riskstream.tools", 4),
    ("benchmarks", 4),
    ("models", 4),
    ("riskstream.cli", 5),
)
LAYER_NAMES = {0: "udfs (domain core)", 1: "riskstream base modules", 2: "riskstream.ops", 3: "pipelines",
               4: "tools, benchmarks, models", 5: "riskstream.cli"}
CLI = "riskstream.cli"
ENTRY_POINTS = frozenset({"riskstream.__main__"})  # may import the CLI (a `python -m riskstream`, if one is added)


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # the project module it reaches
    line: int
    text: str  # the statement, as written

    def where(self) -> str:
        return f"{module_files()[self.importer].relative_to(ROOT)}:{self.line} `{self.text}`"


@lru_cache(maxsize=None)
def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of the project packages."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def owning_module(name: str) -> str | None:
    """The project module ``name`` is, or the one it is an attribute of (``a.b.c`` -> ``a.b`` if ``a.b.c``
    is no module); None outside the project."""
    mods = module_files()
    parts = name.split(".")
    while parts:
        if ".".join(parts) in mods:
            return ".".join(parts)
        parts.pop()
    return None


def package_of(module: str) -> str:
    f = module_files()[module]
    return module if f.name == "__init__.py" else module.rpartition(".")[0]


def layer(module: str) -> int:
    """The layer of the longest prefix in LAYERS that ``module`` falls under; -1 for none."""
    matches = [(len(p), n) for p, n in LAYERS if module == p or module.startswith(p + ".")]
    return max(matches)[1] if matches else -1


def outside_private_module(importer: str, dotted: str) -> str | None:
    """The private module (``pkg._mod``) that ``dotted`` names or lies in, if ``importer`` is outside
    ``pkg``; else None."""
    parts = dotted.split(".")
    for i, seg in enumerate(parts):
        if is_private(seg):
            pkg = ".".join(parts[:i])
            return None if importer == pkg or importer.startswith(pkg + ".") else ".".join(parts[:i + 1])
    return None


@lru_cache(maxsize=None)
def walk() -> tuple[list[Import], list[str]]:
    """Every import between project modules, and every use of another module's private name."""
    imports: list[Import] = []
    private: list[str] = []
    for mod, f in module_files().items():
        src = f.read_text()
        tree = ast.parse(src, filename=str(f))
        rel = f.relative_to(ROOT)
        bound: dict[str, str] = {}  # local name -> the project module it names (for `mod._x` below)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            text = " ".join((ast.get_source_segment(src, node) or "").split())
            where = f"{rel}:{node.lineno} `{text}`"
            if isinstance(node, ast.Import):
                for a in node.names:
                    target = owning_module(a.name)
                    if target is None:
                        continue
                    imports.append(Import(mod, target, node.lineno, text))
                    if a.asname:
                        bound[a.asname] = target
                    if hidden := outside_private_module(mod, a.name):
                        private.append(f"{where} imports the private module {hidden}")
                continue
            if node.level:  # relative: from the importer's package, up level - 1
                base = package_of(mod).split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if owning_module(source) is None:
                continue
            for a in node.names:
                full = f"{source}.{a.name}"
                if full in module_files():  # `from pkg import module`
                    imports.append(Import(mod, full, node.lineno, text))
                    bound[a.asname or a.name] = full
                    if hidden := outside_private_module(mod, full):
                        private.append(f"{where} imports the private module {hidden}")
                    continue
                target = owning_module(source)
                imports.append(Import(mod, target, node.lineno, text))
                if hidden := outside_private_module(mod, source):
                    private.append(f"{where} imports from the private module {hidden}")
                if is_private(a.name) and target != mod:
                    private.append(f"{where} imports the private name {a.name} of {target}")
        for node in ast.walk(tree):  # `stack._free_port()`: a private name reached through a module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and is_private(node.attr)
                    and bound.get(node.value.id, mod) != mod):
                private.append(f"{rel}:{node.lineno} `{ast.get_source_segment(src, node)}` uses the private "
                               f"name {node.attr} of {bound[node.value.id]}")
    return list(dict.fromkeys(imports)), list(dict.fromkeys(private))


def graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    g: dict[str, dict[str, Import]] = {m: {} for m in module_files()}
    for i in imports:
        if i.target != i.importer:
            g[i.importer].setdefault(i.target, i)
    return g


def components(g: dict[str, dict]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): modules that import each other
    in a circle, directly or through others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
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
                comps.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return comps


def cycles(g: dict[str, dict]) -> list[list[str]]:
    """One cycle, ``[a, b, ..., a]``, through each strongly connected component."""
    return [shortest_cycle(comp[0], set(comp), g) for comp in components(g)]


def shortest_cycle(start: str, members: set[str], g: dict[str, dict]) -> list[str]:
    """The shortest path start -> ... -> start inside ``members`` (breadth first)."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def describe(comp: list[str], g: dict[str, dict[str, Import]]) -> str:
    start = CLI if CLI in comp else comp[0]  # a circle through the CLI reads best from the top
    cycle = shortest_cycle(start, set(comp), g)
    steps = "\n".join(f"    {a} -> {b}   ({g[a][b].where()})" for a, b in zip(cycle, cycle[1:]))
    more = f"\n  all {len(comp)} modules of this circle: {', '.join(comp)}" if len(comp) > len(cycle) - 1 else ""
    return f"import cycle {' -> '.join(cycle)}:\n{steps}{more}"


def layer_violations(imports: list[Import]) -> list[str]:
    out = []
    for i in imports:
        if i.target == i.importer:
            continue
        if i.target == CLI or i.target.startswith(CLI + "."):
            if i.importer not in ENTRY_POINTS:
                out.append(f"{i.importer} imports the CLI ({i.where()}): only entry points may; move what it "
                           "needs below the CLI")
            continue
        a, b = layer(i.importer), layer(i.target)
        if b > a:
            out.append(f"{i.importer} ({LAYER_NAMES[a]}) imports {i.target} ({LAYER_NAMES[b]}), a higher layer "
                       f"({i.where()})")
    return out


def test_every_project_module_is_in_a_layer():
    assert module_files(), "no modules found"
    unplaced = [m for m in module_files() if layer(m) < 0]
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_no_import_cycles():
    imports, _ = walk()
    g = graph(imports)
    found = components(g)
    assert not found, "\n\n".join(describe(c, g) for c in found)


def test_no_private_names_across_modules():
    _, private = walk()
    assert not private, "private names used across modules (make them public or move them):\n" + \
        "\n".join(f"  {p}" for p in private)


def test_layers_import_downward_only():
    imports, _ = walk()
    bad = layer_violations(imports)
    assert not bad, "layer violations:\n" + "\n".join(f"  {b}" for b in bad)


def test_udfs_import_nothing_else_of_the_project():
    imports, _ = walk()
    bad = [f"  {i.importer} imports {i.target} ({i.where()})" for i in imports
           if i.importer.split(".")[0] == "udfs" and i.target.split(".")[0] != "udfs"]
    assert not bad, "udfs is the domain core and imports only udfs:\n" + "\n".join(bad)


def test_pipelines_import_no_cli():
    imports, _ = walk()
    bad = [f"  {i.importer} imports {i.target} ({i.where()})" for i in imports
           if i.importer.split(".")[0] == "pipelines" and (i.target == CLI or i.target.startswith(CLI + "."))]
    assert not bad, "pipelines only builds jobs and imports no CLI:\n" + "\n".join(bad)


# -- the checker itself, on small fake graphs ---------------------------------------------------------


def test_cycle_finder_names_the_cycle():
    g = {"a": {"b": None}, "b": {"c": None}, "c": {"a": None}, "d": {"a": None}}
    assert cycles(g) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": None}, "b": {}}) == []
    assert cycles({"a": {"b": None}, "b": {"a": None}}) == [["a", "b", "a"]]
