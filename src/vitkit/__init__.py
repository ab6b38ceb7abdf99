"""vitkit: the Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021)."""

from .checkpoint import CheckpointError, load, save
from .cnn import ResNet, ResNetConfig
from .config import ViTConfig, list_presets
from .factory import create_model
from .model import VisionTransformer

__version__ = "0.14.0"  # the top released entry of CHANGELOG.md (tests/test_docs.py checks)

__all__ = [
    "CheckpointError",
    "ResNet",
    "ResNetConfig",
    "ViTConfig",
    "VisionTransformer",
    "__version__",
    "create_model",
    "list_presets",
    "load",
    "save",
]
