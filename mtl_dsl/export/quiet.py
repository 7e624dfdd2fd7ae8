"""Silence of the exporters while they run: their own output is not the user's business.

``torch.export`` prints a failed trace's whole partial program to stderr, the ONNX exporter
prints progress lines to stdout, and both log warnings meant for their developers. A failure is
reported by ``locate`` at the spec node behind it; a success by the numerical check. With
``verbose`` (``mtl-dsl export --verbose``) everything is shown as the exporters write it.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator

PREFIXES = ("torch", "onnxscript", "onnx_ir")
_verbose = [False]


@contextlib.contextmanager
def verbose(on: bool) -> Iterator[None]:
    """Within: ``quiet`` shows everything (``on``) or nothing."""
    before = _verbose[0]
    _verbose[0] = on
    try:
        yield
    finally:
        _verbose[0] = before


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    if _verbose[0]:
        yield
        return
    loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
               if name.split(".")[0] in PREFIXES]
    loggers += [logging.getLogger(p) for p in PREFIXES]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
