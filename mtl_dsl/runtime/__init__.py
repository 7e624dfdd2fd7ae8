"""Training runtime: data (synthetic scenes, NYUD-v2, PASCAL-Context), the official augmentation
pipeline, losses, metrics and the Ray Train loop.

This package file stays import-light (no torch, no numpy) so that the CLI can import it to print
help without paying for torch; import the submodules you need:

* ``mtl_dsl.runtime.datasets``: ``build_dataset(name, root, split, profile, ...)``, ``collate_samples``
* ``mtl_dsl.runtime.synthetic``: ``SyntheticDataset``, ``render_sample``
* ``mtl_dsl.runtime.transforms``: the train/test pipelines of models.md section 2.2
* ``mtl_dsl.runtime.metrics``: ``MetricSet``, ``METRIC_DIRECTIONS``, ``delta_m``, ``load_baseline``
"""

IGNORE_INDEX = 255
DATASET_NAMES = ("synthetic", "nyud", "pascal")
