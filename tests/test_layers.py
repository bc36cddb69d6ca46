"""sslseq's packages import only downward: the order below is the one in docs/design.md."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sslseq"

# lowest first; a module may import from its own package and from any lower layer, never upward
# or sideways, so each layer can be read, tested and replaced knowing only what is below it
LAYERS = [
    {"utils"},
    {"audio", "config", "hw", "kernels"},
    {"data", "objectives"},
    {"features", "lm"},
    {"nn", "cluster"},
    {"models"},
    {"asr", "convert"},
    {"train"},
    {"bench"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    """The layer unit of a file: its top package under sslseq/, or its module name there."""
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def _imported_units(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, unit) of every sslseq import in a module, those inside functions included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sslseq"):
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("sslseq.")]
    return found


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    missing = sorted(units - RANK.keys())
    assert not missing, f"place {missing} in LAYERS (tests/test_layers.py) and docs/design.md's layer list"


def test_imports_run_downward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit not in RANK:
            continue
        for line, target in _imported_units(ast.parse(path.read_text(), str(path))):
            if target != unit and target in RANK and RANK[target] >= RANK[unit]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports sslseq.{target} "
                              f"(layer {RANK[target]}) from layer {RANK[unit]}")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import():
    tree = ast.parse("def f():\n    from sslseq.train.trainer import Trainer\n")
    assert _imported_units(tree) == [(2, "train")] and RANK["train"] > RANK["models"]
