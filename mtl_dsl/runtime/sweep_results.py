"""The results of a sweep: one row per trial, the table, the CSV and the Pareto plot.

Written into the experiment folder by ``sweep.run_sweep``:

* ``results.txt``: the table ``mtl-dsl tune`` prints (trial, status, steps, the searched values,
  parameters, MACs, each task's metric, delta_m with a baseline, Pareto membership), then the
  best trial and the message of every failed trial (a spec error with its caret);
* ``results.csv``: the same, one row per trial, with every validation metric;
* ``pareto.png``: the sweep's metric against multiply-adds and against parameters, each trial a
  point, the Pareto front (no other trial is at most as costly and at least as good, one of them
  strictly) drawn as a step line. matplotlib draws it (Agg, no display needed).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

CSV_FILE, TABLE_FILE, PLOT_FILE = "results.csv", "results.txt", "pareto.png"
PLOT_SIZE = (12, 5)  # inches at 100 dpi: a 1200 x 500 PNG
PLOT_DPI = 100


@dataclass
class TrialRow:
    trial_id: str
    status: str  # done, stopped (early, by ASHA), error, unfinished (interrupted, budget spent)
    step: int
    values: dict[str, Any]
    params: Optional[int] = None
    macs: Optional[int] = None
    metrics: dict[str, float] = field(default_factory=dict)
    delta_m: Optional[float] = None
    objective: Optional[float] = None
    error: str = ""
    front_macs: bool = False
    front_params: bool = False


def pareto_front(costs: Sequence[float], values: Sequence[float], maximize: bool) -> list[bool]:
    """For each point, whether no other point is at most as costly and at least as good, one of
    the two strictly (equal points are all on the front)."""
    sign = 1.0 if maximize else -1.0
    better = [sign * v for v in values]
    front = []
    for i, (c, v) in enumerate(zip(costs, better)):
        dominated = any(cj <= c and vj >= v and (cj < c or vj > v)
                        for j, (cj, vj) in enumerate(zip(costs, better)) if j != i)
        front.append(not dominated)
    return front


# -- rows -----------------------------------------------------------------------------------------------


def _status(trial, step: int, iterations: int) -> str:
    if trial.status == "ERROR":
        return "error"
    if trial.status == "TERMINATED":
        return "done" if step >= iterations else "stopped"
    return "unfinished"


def collect_rows(trials: list, sweep: dict, trials_dir: Path) -> list[TrialRow]:
    """One row per Tune trial (``ExperimentAnalysis.trials``), with the Pareto flags set."""
    import json

    from .sweep_trial import ERROR_FILE, FIGURES_FILE, plain_value

    rows = []
    for trial in sorted(trials, key=lambda t: t.trial_id):
        last = dict(trial.last_result or {})
        folder = trials_dir / trial.trial_id
        step = int(last.get("step", 0) or 0)
        row = TrialRow(trial_id=trial.trial_id, status=_status(trial, step, sweep["iterations"]),
                       step=step, values={k: plain_value(trial.config.get(k)) for k in sweep["search"]})
        figures = last if "params" in last else (
            json.loads((folder / FIGURES_FILE).read_text()) if (folder / FIGURES_FILE).is_file() else {})
        row.params, row.macs = figures.get("params"), figures.get("macs")
        row.metrics = {k[len("val/"):]: float(v) for k, v in last.items() if k.startswith("val/")}
        row.delta_m = last.get("delta_m")
        objective = last.get(sweep["metric_key"])
        row.objective = float(objective) if isinstance(objective, (int, float)) else None
        if (folder / ERROR_FILE).is_file() and row.status != "done":
            row.error = (folder / ERROR_FILE).read_text(encoding="utf-8").rstrip()
        rows.append(row)
    mark_fronts(rows, sweep["mode"] == "max")
    return rows


def mark_fronts(rows: list[TrialRow], maximize: bool) -> None:
    scored = [r for r in rows if r.objective is not None and r.params is not None and r.macs is not None]
    values = [r.objective for r in scored]
    for flag, costs in (("front_macs", [r.macs for r in scored]), ("front_params", [r.params for r in scored])):
        for row, on in zip(scored, pareto_front(costs, values, maximize)):
            setattr(row, flag, on)


# -- table and CSV ---------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    from .sweep_space import format_value

    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return format_value(value)


def task_metric_columns(sweep: dict) -> list[str]:
    """Each task's metric, in the order of the run's tasks."""
    from .config import RunConfig
    from .metrics import PRIMARY_METRICS

    tasks = RunConfig.model_validate(sweep["config"]).profile().task_names
    return [PRIMARY_METRICS[t] for t in tasks if t in PRIMARY_METRICS]


def format_table(rows: list[TrialRow], sweep: dict) -> str:
    keys = list(sweep["search"])
    metrics = task_metric_columns(sweep)
    with_delta = sweep.get("baseline") is not None
    header = ["trial", "status", "step", *keys, "params", "GMACs", *metrics]
    header += ["delta_m %"] if with_delta else []
    header += ["front"]
    lines = [header]
    for r in rows:
        front = "".join(c for c, on in (("M", r.front_macs), ("P", r.front_params)) if on) or "-"
        cells = [r.trial_id, r.status, str(r.step), *(_fmt(r.values.get(k)) for k in keys),
                 f"{r.params:,}" if r.params is not None else "-",
                 f"{r.macs / 1e9:.3f}" if r.macs is not None else "-",
                 *(_fmt(r.metrics.get(m)) for m in metrics)]
        cells += [_fmt(r.delta_m)] if with_delta else []
        lines.append(cells + [front])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append(f"front: M = on the Pareto front of {sweep['metric']} against MACs, P = against "
                f"parameters ({'higher' if sweep['mode'] == 'max' else 'lower'} is better)")
    best = best_row(rows, sweep["mode"] == "max")
    if best is not None:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in best.values.items())
        text.append(f"best: trial {best.trial_id} ({shown}): {sweep['metric']} {best.objective:.4g}")
    else:
        text.append(f"best: none (no trial reported {sweep['metric']})")
    if sweep.get("baseline") is None:
        text.append("delta_m: not computed (no single-task baseline file given)")
    for r in rows:
        if r.error:
            text.append(f"\ntrial {r.trial_id} failed:\n{r.error}")
    return "\n".join(text)


def best_row(rows: list[TrialRow], maximize: bool) -> Optional[TrialRow]:
    scored = [r for r in rows if r.objective is not None]
    if not scored:
        return None
    return (max if maximize else min)(scored, key=lambda r: r.objective)


def write_csv(rows: list[TrialRow], sweep: dict, path: Path) -> None:
    keys = list(sweep["search"])
    metric_names = sorted({m for r in rows for m in r.metrics})
    header = ["trial_id", "status", "step", *keys, "params", "macs", *metric_names, "delta_m",
              f"objective:{sweep['metric']}", "pareto_macs", "pareto_params", "error"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            writer.writerow([r.trial_id, r.status, r.step, *(_fmt(r.values.get(k)) for k in keys),
                             r.params if r.params is not None else "", r.macs if r.macs is not None else "",
                             *(r.metrics.get(m, "") for m in metric_names),
                             "" if r.delta_m is None else r.delta_m,
                             "" if r.objective is None else r.objective,
                             int(r.front_macs), int(r.front_params),
                             r.error.splitlines()[0] if r.error else ""])


# -- the plot --------------------------------------------------------------------------------------------


def plot_pareto(rows: list[TrialRow], sweep: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    axes = fig.subplots(1, 2)
    scored = [r for r in rows if r.objective is not None and r.params is not None and r.macs is not None]
    better = "higher" if sweep["mode"] == "max" else "lower"
    for ax, (name, cost, label, flag) in zip(axes, (
            ("MACs", lambda r: r.macs / 1e9, "multiply-adds, G MACs (batch 1)", "front_macs"),
            ("parameters", lambda r: r.params / 1e6, "parameters, M", "front_params"))):
        ax.set_title(f"{sweep['metric']} against {name}")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{sweep['metric']} ({better} is better)")
        ax.grid(alpha=0.3)
        if not scored:
            ax.text(0.5, 0.5, "no trial reported the metric", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        ax.scatter([cost(r) for r in scored], [r.objective for r in scored], color="0.6",
                   label="trial", zorder=2)
        front = sorted((r for r in scored if getattr(r, flag)), key=cost)
        ax.step([cost(r) for r in front], [r.objective for r in front], where="post", color="C3",
                zorder=1)
        ax.scatter([cost(r) for r in front], [r.objective for r in front], color="C3",
                   label="Pareto front", zorder=3)
        for r in scored:
            label_text = ", ".join(f"{k}={_fmt(v)}" for k, v in r.values.items())
            ax.annotate(label_text, (cost(r), r.objective), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ax.margins(x=0.25, y=0.12)  # room for the labels of the outermost points
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.86, wspace=0.25)
    fig.savefig(path, dpi=PLOT_DPI)


def write_results(rows: list[TrialRow], sweep: dict, folder: Path) -> tuple[str, dict]:
    """Table, CSV and plot in ``folder``; returns (table, {"table", "csv", "plot": path})."""
    table = format_table(rows, sweep)
    files = {"table": folder / TABLE_FILE, "csv": folder / CSV_FILE, "plot": folder / PLOT_FILE}
    files["table"].write_text(table + "\n", encoding="utf-8")
    write_csv(rows, sweep, files["csv"])
    plot_pareto(rows, sweep, files["plot"], f"{folder.name}: {len(rows)} trials")
    return table, files
