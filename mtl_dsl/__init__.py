"""mtl-dsl: a declarative language for multi-task dense-prediction vision models."""
from .errors import SpecError

__version__ = "0.1.0"
__all__ = ["SpecError", "__version__"]
