"""The import contract of `infoq_hf`: modules sit in layers and import only from their own layer or below.

Checked on the source (AST, no import): no import cycle between modules (imports inside functions
count), no upward import, no private name (`_x`) imported from another module, no `infoq_hf` import
inside a function body (those are kept for optional third-party dependencies). The top-level
`infoq_hf/__init__.py` may import anything.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom-up; a module's layer is that of its longest listed prefix (a package covers its submodules).
LAYER_NAMES = [
    "names bitwidth defaults policy linear_regex version",
    "calibration quant accounting",
    "information",
    "sensitivity",
    "allocation",
    "config config_aliases plots",
    "pipeline",
    "atomic_save integrity upload_files gguf_types vllm_rules checkpoint integrations origin checkpoint_info card "
    "saving hub export gguf",
    "cli",
]
LAYERS = {f"infoq_hf.{n}": level for level, names in enumerate(LAYER_NAMES) for n in names.split()}
LAYERS["infoq_hf"] = len(LAYER_NAMES)  # the package's __init__: the public API, imports anything

# Known violations still to remove, each with a one-line reason, e.g.
# ("inner", "infoq_hf.a", "infoq_hf.b"): "why it cannot move yet". A new violation fails, and so does a
# listed one that is gone (the list only shrinks). Empty: the package keeps its layers.
ALLOWED: dict[tuple, str] = {}


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(root: Path, package: str):
    """(module, imported module, imported name or None, inside a function, line) of every import of `package`."""
    mods = _modules(root, package)
    found = []
    for mod, path in mods.items():
        base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]

        def visit(node, inner, mod=mod, base=base):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ImportFrom):
                    if child.level:
                        target = ".".join(
                            base[: len(base) - child.level + 1] + ([child.module] if child.module else [])
                        )
                    else:
                        target = child.module or ""
                    if target == package or target.startswith(package + "."):
                        for alias in child.names:
                            sub = f"{target}.{alias.name}"
                            found.append((mod, sub if sub in mods else target, alias.name, inner, child.lineno))
                elif isinstance(child, ast.Import):
                    for alias in child.names:
                        if alias.name == package or alias.name.startswith(package + "."):
                            found.append((mod, alias.name, None, inner, child.lineno))
                func = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, inner or func)

        visit(ast.parse(path.read_text(), str(path)), False)
    return mods, found


def _layer(mod: str, layers: dict[str, int], package: str) -> int | None:
    """The layer of the longest listed prefix of `mod`; the root package's entry covers its __init__ only,
    so a new module must be placed in LAYERS."""
    matches = [p for p in layers if mod == p or (p != package and mod.startswith(p + "."))]
    return layers[max(matches, key=len)] if matches else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def violations(root: Path, package: str, layers: dict[str, int]) -> set[tuple]:
    """The contract's violations: ("unlayered", module), ("inner", module, imported),
    ("private", module, imported.name), ("upward", module, imported), ("cycle", module, module, ...)."""
    mods, found = _imports(root, package)
    out = {("unlayered", m) for m in mods if _layer(m, layers, package) is None}
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for src, dst, name, inner, _line in found:
        if inner:
            out.add(("inner", src, dst))
        if name and name.startswith("_") and not name.startswith("__") and dst != src:
            out.add(("private", src, f"{dst}.{name}"))
        low, high = _layer(src, layers, package), _layer(dst, layers, package)
        if low is not None and high is not None and high > low:
            out.add(("upward", src, dst))
        if dst != src and not src.startswith(dst + "."):  # a submodule's import of its own package
            graph[src].add(dst)
    out |= {("cycle", *comp) for comp in _cycles(graph)}
    return out


def test_infoq_hf_keeps_its_layers():
    assert all(reason.strip() for reason in ALLOWED.values()), "every allowed violation needs its reason"
    found = violations(ROOT, "infoq_hf", LAYERS)
    new = sorted(found - set(ALLOWED))
    gone = sorted(set(ALLOWED) - found)
    assert not new, "import contract broken (see tests/test_layers.py):\n" + "\n".join(map(str, new))
    assert not gone, "fixed: remove from ALLOWED in tests/test_layers.py:\n" + "\n".join(map(str, gone))


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_flags_cycles_upward_private_and_inner_imports(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from .top import run\n",
            "pkg/low.py": "from .top import run\n",  # upward, and a cycle with top
            "pkg/mid/__init__.py": "",
            "pkg/mid/a.py": "from ..low import _helper\n",  # private
            "pkg/mid/b.py": "def f():\n    from pkg.mid import a\n",  # inner
            "pkg/top.py": "from . import low\n\n\ndef run():\n    pass\n",
            "pkg/stray.py": "",
        },
    )
    layers = {"pkg.low": 0, "pkg.mid": 1, "pkg.top": 2, "pkg": 3}
    assert violations(tmp_path, "pkg", layers) == {
        ("upward", "pkg.low", "pkg.top"),
        ("cycle", "pkg.low", "pkg.top"),
        ("private", "pkg.mid.a", "pkg.low._helper"),
        ("inner", "pkg.mid.b", "pkg.mid.a"),
        ("unlayered", "pkg.stray"),
    }
    # and a clean package passes
    clean = tmp_path / "clean"
    _write(
        clean,
        {"pkg/__init__.py": "from .top import run\n", "pkg/low.py": "X = 1\n", "pkg/top.py": "from .low import X\n"},
    )
    assert violations(clean, "pkg", {"pkg.low": 0, "pkg.top": 1, "pkg": 2}) == set()
