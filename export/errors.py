"""Errors of the export package; it is a :class:`pgn.errors.PGNError`, so CLIs print them as one line."""

from __future__ import annotations

from pgn.errors import PGNError


class RuntimeUnavailable(PGNError):
    """A runtime or converter this export needs is missing here (TensorRT, a CUDA GPU, macOS for CoreML).

    The message says what is missing, what to install, and where the target runs.
    """
