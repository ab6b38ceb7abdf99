"""Lower rooms never import higher ones: the house's layering, read from the imports themselves.

Each module of ``src/vitkit`` has a floor below. A module may import from a lower floor, or from
its own room (the modules of one package import each other); importing from a higher floor, or
from another room on the same floor, fails here with the module and the import named. So the
data layer cannot import the model, inference cannot import training, and config cannot build a
model, whatever a docstring claims.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# (floor, room): a module's room is its own name or its package's (data.*, train.*, ...).
FLOORS: dict[str, int] = {
    "errors": 0,
    "files": 1,
    "config": 2,
    "runtime": 2,
    "images": 2,
    "attention": 3,
    "embed": 3,
    "hybrid": 4,  # the BiT ResNet the paper's hybrid reads (sec. 3.1): a stem beside embed's, reusing its init
    "preprocess": 3,
    "data": 4,
    "probe": 5,  # the ridge probe and k-NN: linear algebra on features, and the per-class draw
    "model": 5,
    "pretext": 6,  # masked pre-training objectives: wrap the model; train plugs them into its step
    "cnn": 5,  # the CNN reference (a ResNet): beside the ViT, built from torchvision blocks
    "checkpoint": 6,
    "factory": 7,
    "interop": 7,
    "export": 8,
    "quantize": 9,
    "evaluate": 10,
    "features": 10,
    "explain": 10,
    "transfer": 11,
    "distributed": 11,
    "train": 12,
    "bench": 13,
    "serve": 13,
    "commands": 14,
    "cli": 15,
    "vitkit": 14,  # the package's __init__: the public API (and __version__, which the CLI prints)
    "__main__": 16,
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _submodule(package: str, name: str) -> str:
    """``from package import name``: the module ``package.name`` when there is one, else ``package``."""
    folder = SRC.joinpath(*package.split("."))
    is_module = (folder / f"{name}.py").is_file() or (folder / name).is_dir()
    return f"{package}.{name}" if is_module else package


def _imports(path: Path) -> list[str]:
    """The vitkit modules ``path`` imports (``from .x import y`` resolved to ``vitkit.x``)."""
    module = _name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [_submodule(target, a.name) for a in node.names] if node.module is None else [target]
            found += [n for n in names if n.split(".")[0] == "vitkit"]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "vitkit"]
    return found


def _modules() -> list[Path]:
    return sorted((SRC / "vitkit").rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _name(p))
def test_imports_only_go_down(path):
    module = _name(path)
    room = _room(module)
    assert room in FLOORS, f"{module}: give its room {room!r} a floor in tests/test_layers.py"
    wrong = []
    for target in _imports(path):
        other = _room(target)
        if other == room:
            continue
        if other not in FLOORS or FLOORS[other] >= FLOORS[room]:
            wrong.append(f"{target} (floor {FLOORS.get(other)}, {module} is on {FLOORS[room]})")
    assert not wrong, f"{module} imports upward or sideways: {', '.join(wrong)}"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule is not vacuous: a data module that imports the model is caught."""
    package = tmp_path / "vitkit" / "data"
    package.mkdir(parents=True)
    (package / "bad.py").write_text("from ..model import VisionTransformer\nfrom .dataset import ImageDataset\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    assert _imports(package / "bad.py") == ["vitkit.model", "vitkit.data.dataset"]
    with pytest.raises(AssertionError, match="vitkit.data.bad imports upward or sideways: vitkit.model"):
        test_imports_only_go_down(package / "bad.py")
