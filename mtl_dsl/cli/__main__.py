"""``python -m mtl_dsl.cli``: the same as the ``mtl-dsl`` command."""
import sys

from . import main

sys.exit(main())
