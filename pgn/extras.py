"""Optional dependencies: which ``pip install "pgn-toolkit[extra]"`` brings each one, and one-line errors naming it.

``import pgn`` needs torch, torchvision, numpy, click and rich only. Everything else is an extra: ``onnx``,
``coreml``, ``executorch``, ``tensorrt``, ``images`` (bundled photographs), ``bench``, ``demos``, ``distill``,
``tensorboard``, and ``all`` for every one that installs without an NVIDIA GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import PGNError

#: The extra that installs each optional top-level module.
EXTRA_OF_MODULE = {
    "onnx": "onnx",
    "onnxscript": "onnx",
    "onnxruntime": "onnx",
    "coremltools": "coreml",
    "executorch": "executorch",
    "tensorrt": "tensorrt",
    "skimage": "images",
    "sklearn": "images",
    "matplotlib": "bench",
    "psutil": "bench",
    "tqdm": "bench",
    "tensorboard": "tensorboard",
}


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra``, e.g. ``pip install "pgn-toolkit[onnx]"``."""
    return f'pip install "pgn-toolkit[{extra}]"'


def missing(*modules: str) -> list[str]:
    """The names among ``modules`` that cannot be imported here (found without importing them)."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def require(module: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module``, or raise a one-line :class:`PGNError`: ``<purpose> needs <module>: pip install ...``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    extra = extra or EXTRA_OF_MODULE.get(module.split(".")[0], "all")
    raise PGNError(f"{purpose} needs {module.split('.')[0]}, which is not installed: {install_hint(extra)}")


def require_all(modules: tuple[str, ...], purpose: str, extra: str) -> None:
    """Raise one line naming every module of ``modules`` that is missing and the extra that brings them."""
    absent = missing(*modules)
    if absent:
        raise PGNError(f"{purpose} needs {', '.join(absent)}, not installed here: {install_hint(extra)}")
