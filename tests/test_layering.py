"""Layers import only what they need, checked in fresh interpreters.

The config tree is read by every command (``--help`` included) and must stay
fast: no torch, no cv2. ``pedcrowd eval`` is pure numpy (test_eval_cli.py runs
the command itself and checks the same for it).
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "torchvision", "cv2", "matplotlib")


def heavy_modules_after(statement: str) -> list[str]:
    """The heavy modules loaded by running ``statement`` in a new interpreter."""
    code = f"import sys\n{statement}\nprint('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("HEAVY"))
    return eval(line[len("HEAVY "):])


def test_torch_free_modules():
    modules = ("pedcrowd.data.config", "pedcrowd.model.config", "pedcrowd.engine.device", "pedcrowd.eval")
    assert heavy_modules_after("\n".join(f"import {m}" for m in modules)) == []


def test_config_tree_loads_neither_torch_nor_cv2():
    # data/synth.py (cv2) used to come in for SynthConfig, losses/ and model/ for torch.
    assert heavy_modules_after("import pedcrowd.engine.config") == []


def test_eval_command_loads_no_torch(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(
        '{"images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],'
        ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 70],'
        ' "iscrowd": 0}], "categories": [{"id": 1, "name": "person"}]}'
    )
    dets = tmp_path / "dets.json"
    dets.write_text('[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 70], "score": 0.9}]')
    statement = (
        "from pedcrowd.cli import app\n"
        f"app(['eval', '--gt', {str(gt)!r}, '--dets', {str(dets)!r}, '--json'], standalone_mode=False)"
    )
    assert heavy_modules_after(statement) == []


# ----------------------------------------------------------------------------- import graph

import ast  # noqa: E402
from pathlib import Path  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "pedcrowd"

# The layers, bottom first: a module may import its own layer and the layers below it,
# never one above. Top-level modules are named in full; a package stands for all its modules.
LAYERS: tuple[tuple[str, ...], ...] = (
    # base: errors, file writing, weights-only loading, box arithmetic, config checking,
    # float32 islands under autocast
    ("pedcrowd.errors", "pedcrowd.fileio", "pedcrowd.safeload", "pedcrowd.box_np",
     "pedcrowd.box_torch", "pedcrowd.precision", "pedcrowd.config_check"),
    ("pedcrowd.formats",),
    ("pedcrowd.eval",),
    ("pedcrowd.losses", "pedcrowd.vis"),
    ("pedcrowd.data",),
    ("pedcrowd.model", "pedcrowd.media", "pedcrowd.progress"),
    ("pedcrowd.engine",),
    ("pedcrowd.analyze", "pedcrowd.infer", "pedcrowd.compare", "pedcrowd.reference"),
    ("pedcrowd.commands", "pedcrowd.cli", "pedcrowd.compare_render",
     "pedcrowd.__main__", "pedcrowd"),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The pedcrowd modules one import statement loads (``from a import b``: ``a.b`` if a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            here = here[: len(here) - node.level + 1]
            base = ".".join(here + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("pedcrowd") and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the pedcrowd modules it imports, from every import statement (module
    level, inside functions, under TYPE_CHECKING) and every ``importlib.import_module("...")``."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_imported(module, path, node, modules))
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                target = str(node.args[0].value)
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("pedcrowd") and target != module:
                    graph[module].add(target)
    return graph


def layer_of(module: str) -> int:
    for rank, members in enumerate(LAYERS):
        for member in members:
            if module == member or (member != "pedcrowd" and module.startswith(member + ".")):
                return rank
    raise AssertionError(f"{module} is in no layer of tests/test_layering.py: place it")


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_imports_run_downward_only():
    upward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in sorted(import_graph().items())
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert upward == []


def test_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_no_string_imports_of_pedcrowd_modules():
    # importlib hops hide an edge from IDEs and type checkers: a lazy attribute may name a
    # module, but only in a package __init__ (PEP 562), never as "module:function" strings.
    offenders = []
    for module, path in _modules().items():
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith("pedcrowd.") and ":" in node.value:
                    offenders.append(f"{module}: {node.value!r}")
    assert offenders == []
