"""Importing ExecuTorch's runtime without its compiler.

ExecuTorch's Python runtime (``executorch.runtime``, ``executorch.extension.pybindings.portable_lib``, the training
module) imports one small file of its compiler package, ``executorch.exir._warnings``, and with it the whole
``executorch.exir`` package: ``torch._dynamo``, ``torch._inductor`` and the export passes. That is most of the
cost of running a ``.pte``: 6.1 s against 2.2 s for ``import torch`` and the runtime on an x86 host, and about
three times as long under ``qemu-aarch64``. :func:`import_runtime` imports only the runtime: while it runs,
``executorch.exir`` is a bare package (its folder, without its ``__init__``), so ``exir._warnings`` loads on its
own; afterwards both are removed from ``sys.modules`` again, and a later ``import executorch.exir`` (to lower a
program) is an ordinary one. Where ExecuTorch's layout differs (the compiler is already imported, or the runtime needs
more of it), the runtime is imported the ordinary way.

Standard library only: the aarch64 guest (:mod:`export.arm_guest`), where nothing of pgn is importable, loads this
file by its path.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

COMPILER = "executorch.exir"


def _bare_compiler_package() -> types.ModuleType | None:
    """``executorch.exir`` as a package without its ``__init__``, put into ``sys.modules``; ``None`` where
    ExecuTorch is not installed or its compiler is already imported."""
    if COMPILER in sys.modules:
        return None
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "exir")
    if not os.path.isdir(folder):
        return None
    package = types.ModuleType(COMPILER)
    package.__path__ = [folder]
    package.__package__ = COMPILER
    sys.modules[COMPILER] = package
    return package


def _import(training: bool) -> types.SimpleNamespace:
    import torch  # noqa: F401 - loads libtorch, which the runtime's extension links against
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime, Verification

    pieces = types.SimpleNamespace(portable_lib=portable_lib, Runtime=Runtime, Verification=Verification)
    if training:
        from executorch.extension.training import _load_for_executorch_for_training_from_buffer, get_sgd_optimizer

        pieces.load_for_training, pieces.get_sgd_optimizer = _load_for_executorch_for_training_from_buffer, get_sgd_optimizer
    return pieces


def _forget_compiler() -> None:
    """Remove ``executorch.exir`` and what was imported under it from ``sys.modules``, so that a later ``import
    executorch.exir`` is an ordinary, complete one."""
    for name in [n for n in sys.modules if n == COMPILER or n.startswith(COMPILER + ".")]:
        del sys.modules[name]


def import_runtime(training: bool = False) -> types.SimpleNamespace:
    """ExecuTorch's runtime: ``portable_lib``, ``Runtime`` and ``Verification`` (with ``training``, also
    ``load_for_training`` and ``get_sgd_optimizer``), without importing its compiler. ``ImportError`` where
    ExecuTorch is not installed."""
    if _bare_compiler_package() is None:
        return _import(training)
    try:
        return _import(training)
    except (ImportError, AttributeError):
        _forget_compiler()  # the runtime needs more of the compiler than its warnings: import it the ordinary way
        return _import(training)
    finally:
        if COMPILER in sys.modules and not hasattr(sys.modules[COMPILER], "__file__"):
            _forget_compiler()
