"""The front-end: spec text -> syntax tree -> ``ModelIR``. Pure Python, no torch.

One module per job: ``parser`` (text -> ``ast``), ``loader`` (files and imports), ``values``
(what names stand for, scopes), ``consteval`` (expressions and built-in functions), ``params``
(model parameters, presets, ``--set``), ``profile`` (the task profile and input size),
``naming`` and ``reserved`` (node names), ``calls`` (block calls -> nodes) and ``lower``
(statements -> IR); ``recovery`` and ``syntax_errors`` serve the parser. All of them report into
one ``errors.Diagnostics``.
"""
from .loader import builtin_spec_dirs, iter_builtin_specs
from .lower import Lowerer
from .params import parse_override
from .parser import parse_file, parse_source
from .profile import declared as declared_profiles

__all__ = ["Lowerer", "builtin_spec_dirs", "declared_profiles", "iter_builtin_specs", "parse_file",
           "parse_override", "parse_source"]
