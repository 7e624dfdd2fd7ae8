"""Training runtime: data (synthetic scenes, NYUD-v2, PASCAL-Context), the official augmentation
pipeline, losses, metrics, checkpoints and the Ray Train loop.

This package file stays import-light (no torch, no numpy) so that the CLI can import it to print
help without paying for torch; import the submodules you need. One job per module:

* ``config``: the run config (YAML layers, validation, one-line errors); ``commands``: the
  ``train`` / ``eval`` / ``predict`` / ``search`` subcommands
* ``launch``: ``run_training`` on the driver (checks, run folder, plain or Ray Train)
* ``loop``: the loop every worker runs (setup, restore, step, log, evaluate, save);
  ``session``: plain vs Ray Train workers; ``callbacks``: hooks into the loop (fault injection)
* ``optim``: optimisers and the learning-rate schedule; ``sampling``: every seed and the data order
* ``console``: progress lines; ``failures``: the exceptions that stop a run
* ``datasets``: ``open_dataset``, ``build_dataset``, ``collate_samples``; ``synthetic``: the
  built-in scenes; ``transforms``: the official train/test pipelines
* ``losses``, ``weighting``, ``metrics``, ``evaluate``, ``checkpoints``, ``search``
"""
