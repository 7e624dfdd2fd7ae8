"""Weights stored under the official implementations' names: reading checkpoint files safely,
the name correspondence a spec's ``weights`` maps and its blocks' official layouts define,
``mtl-dsl convert``, and loading an official file into a compiled model (``eval``/``predict
--weights``, ``train --init``).

``layout`` and ``plan`` are torch-free (blocks import ``layout``); the rest imports torch.
"""
