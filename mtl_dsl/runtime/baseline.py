"""Single-task baselines and Delta_m: the reference a multi-task result is compared with (a YAML
file, read as the run config is: located errors), and the papers' relative change against it.
The metrics' directions come from ``metrics`` (imported where used: ``metrics`` re-exports
these names)."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class BaselineMetric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: float
    higher_is_better: bool


class Baseline(BaseModel):
    """The single-task reference a multi-task result is compared with."""

    model_config = ConfigDict(extra="forbid")

    selection_split: str = Field(description="split on which the single-task models were selected")
    source: str = ""
    metrics: dict[str, BaselineMetric]


class BaselineError(ValueError):
    """A baseline file that cannot be used; the message names the entry, ``line`` and ``column``
    (1-based, 0: none) where the file writes it."""

    def __init__(self, message: str, line: int = 0, column: int = 0):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


def load_baseline(path: str | Path) -> Baseline:
    """Read a YAML baseline file::

        selection_split: val
        source: ATRC, HRNet18 single-task models, NYUD-v2
        metrics:
          semseg/mIoU: {value: 38.02, higher_is_better: true}
          depth/rmse: {value: 0.6104, higher_is_better: false}
    """
    from .yaml_source import FileSource, load_yaml

    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"baseline file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BaselineError(f"cannot read baseline file {path}: {e}") from None
    data = load_yaml(text, str(path))  # safe, limited, a repeated key refused, at its line
    try:
        baseline = Baseline.model_validate(data)
    except ValidationError as e:  # said as the run config says it, at the key's line and column
        first = e.errors()[0]
        loc = tuple(first["loc"])
        dotted = ".".join(str(p) for p in loc)
        if first["type"] == "missing":
            message = f"missing key '{dotted}'"
        elif first["type"] == "extra_forbidden":
            message = f"unknown key '{dotted}'"
        else:
            message = f"key '{dotted}': {first['msg']} (got {first.get('input')!r})"
        line, column = FileSource(str(path), text).position(loc)
        raise BaselineError(message, line, column) from None
    return check_baseline(baseline, str(path))


def check_baseline(baseline: Baseline | dict, where: str = "baseline") -> Baseline:
    from .metrics import METRIC_DIRECTIONS, higher_is_better

    if isinstance(baseline, dict):
        if "metrics" not in baseline:  # a bare {metric: {value, higher_is_better}} mapping
            baseline = {"selection_split": "unspecified", "metrics": baseline}
        try:
            baseline = Baseline.model_validate(baseline)
        except ValidationError as e:
            first = e.errors()[0]
            raise BaselineError(f"{where}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if not baseline.metrics:
        raise BaselineError(f"{where}: lists no metrics")
    for key, entry in baseline.metrics.items():
        if key in METRIC_DIRECTIONS and entry.higher_is_better != higher_is_better(key):
            raise BaselineError(f"{where}: {key} says higher_is_better: {str(entry.higher_is_better).lower()}, "
                                f"but {key} is {METRIC_DIRECTIONS[key]}-is-better")
        if entry.value == 0:
            raise BaselineError(f"{where}: {key} has value 0; a relative change to it is undefined")
    return baseline


def delta_m(metrics: dict[str, float], baseline: Baseline | dict) -> float:
    """Mean over the baseline's metrics of (-1)^{lower is better} (M - M_st) / M_st, in %.

    List one metric per task in the baseline to get the papers' per-task average.
    """
    baseline = check_baseline(baseline)
    terms = []
    for key, entry in baseline.metrics.items():
        if key not in metrics:
            raise KeyError(f"metric '{key}' of the baseline was not computed (have: {', '.join(metrics)})")
        sign = 1.0 if entry.higher_is_better else -1.0
        terms.append(sign * (metrics[key] - entry.value) / entry.value)
    return 100.0 * sum(terms) / len(terms)


def format_metrics_table(metrics: dict[str, float], baseline: Baseline | None = None,
                         split: str | None = None) -> str:
    """The table ``mtl-dsl eval`` prints; says so when Delta_m is not computed."""
    from .metrics import HIGHER, LOWER, METRIC_DIRECTIONS, METRIC_UNITS

    rows = [("metric", "value", "better", "single-task", "change")]
    for key, value in metrics.items():
        direction = {HIGHER: "higher", LOWER: "lower"}.get(METRIC_DIRECTIONS.get(key, ""), "?")
        unit = METRIC_UNITS.get(key, "%")
        ref, change = "", ""
        if baseline is not None and key in baseline.metrics:
            b = baseline.metrics[key].value
            ref = f"{b:.4g}"
            sign = 1.0 if baseline.metrics[key].higher_is_better else -1.0
            change = f"{100.0 * sign * (value - b) / b:+.2f} %"
        rows.append((key, f"{value:.4f} {unit}", direction, ref, change))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if split:
        lines.append(f"evaluated on split: {split}")
    if baseline is None:
        lines.append("delta_m: not computed (no single-task baseline file given)")
    else:
        lines.append(f"delta_m: {delta_m(metrics, baseline):+.2f} % vs single-task baseline"
                     f"{' (' + baseline.source + ')' if baseline.source else ''}, "
                     f"selected on split '{baseline.selection_split}'")
    return "\n".join(lines)
