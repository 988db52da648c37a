"""Load a user's PyTorch generator given as ``package.module:attr`` or ``path/to/file.py:attr``.

``attr`` may be an ``nn.Module`` instance, or a class or factory function that builds one without arguments
(e.g. a function that constructs a StyleGAN generator and loads its checkpoint). It is called with a batch of
latents of the shape given on the command line and must return (N, 3, H, W) images.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from torch import nn

from pgn.errors import PGNError, first_line


def _import_file(path: Path):
    name = f"pgn_demo_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PGNError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise PGNError(f"importing {path} failed: {e.__class__.__name__}: {first_line(e)}") from None
    return module


def load_module(spec: str) -> nn.Module:
    """Import ``module:attr`` / ``file.py:attr`` and return the ``nn.Module`` it names (or builds); eval mode.

    Raises:
        PGNError: the spec is malformed, the module or file cannot be imported, the attribute does not exist, or
            it is not (and does not build) an ``nn.Module``.
    """
    if ":" not in spec:
        raise PGNError(f"--generator {spec!r}: use 'package.module:attr' or 'path/to/file.py:attr'")
    where, attr = spec.rsplit(":", 1)
    if not where or not attr:
        raise PGNError(f"--generator {spec!r}: both the module (or file) and the attribute are needed, as in 'my_gan.py:generator'")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise PGNError(f"--generator: file not found: {path}")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise PGNError(f"--generator: cannot import module {where!r} ({first_line(e)}); is it on PYTHONPATH?") from None
        except Exception as e:
            raise PGNError(f"--generator: importing {where!r} failed: {e.__class__.__name__}: {first_line(e)}") from None
    if not hasattr(module, attr):
        candidates = sorted(k for k, v in vars(module).items() if isinstance(v, nn.Module) or (isinstance(v, type) and issubclass(v, nn.Module)))
        hint = f"; modules there: {', '.join(candidates)}" if candidates else ""
        raise PGNError(f"--generator: {where!r} has no attribute {attr!r}{hint}")
    obj = getattr(module, attr)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise PGNError(f"--generator: {spec} is a {type(obj).__name__}, not an nn.Module or a function that builds one")
        try:
            obj = obj()
        except Exception as e:
            raise PGNError(f"--generator: calling {spec}() failed: {e.__class__.__name__}: {first_line(e)}") from None
        if not isinstance(obj, nn.Module):
            raise PGNError(f"--generator: {spec}() returned a {type(obj).__name__}, not an nn.Module")
    return obj.eval()
