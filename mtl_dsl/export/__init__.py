"""Deployment: a compiled model as an ONNX file or a ``torch.export`` program, numerically checked.

``export_model(model, path, ExportOptions(...))`` (``run.py``) is the entry point; ``mtl-dsl export``
(``command.py``) wraps it. Everything is done by the libraries made for the job: ``torch.export``
traces the model, ``torch.onnx`` (with ONNX Script) translates it, ONNX Runtime runs the file for
the check. This package file imports nothing heavy, so that the CLI can register the command
without importing torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["export_model", "ExportOptions", "ExportResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'mtl_dsl.export' has no attribute '{name}'")
