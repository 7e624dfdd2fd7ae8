"""``mtl-dsl tune`` end to end on Ray Tune: tiny models, synthetic data, CPU; one Ray for the file."""
from __future__ import annotations

import csv
import os
import re
import signal

import pytest
import yaml
from PIL import Image

from mtl_dsl.cli import main
from mtl_dsl.runtime.config import load_config
from mtl_dsl.runtime.sweep import run_sweep
from mtl_dsl.runtime.sweep_results import pareto_front

TINY = {
    "tasks": "semseg,depth",
    "model": {"overrides": {"backbone": "resnet18", "levels": [1, 2]}},
    "dataset": {"length": 8, "val_length": 2, "cache": True},
    "optimizer": {"lr": 0.01},
    "schedule": {"warmup_iters": 0},
    "training": {"iterations": 4, "batch_size": 2, "input_size": [32, 32], "augment": False,
                 "log_interval": 2, "eval_interval": 2, "eval_batches": 1},
}


def _config(tmp_path, name, **tune):
    return load_config(overrides={**TINY, "run": {"storage": str(tmp_path), "name": name}, "tune": tune})


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for every sweep of this file (each sweep would otherwise start its own)."""
    import ray

    from mtl_dsl.runtime.ray_start import start_ray

    start_ray(load_config(), verbose=False, workers=1)
    yield
    ray.shutdown()


class Events:
    """Records the trial events a sweep sends to its listeners."""

    def __init__(self):
        self.started: list[str] = []
        self.completed: list[str] = []
        self.errored: list[str] = []

    def on_trial_start(self, trial):
        self.started.append(trial.trial_id)

    def on_trial_complete(self, trial):
        self.completed.append(trial.trial_id)

    def on_trial_error(self, trial):
        self.errored.append(trial.trial_id)


class InterruptAfter(Events):
    """Sends this process SIGUSR1 (Tune's signal to stop and save the experiment, as Ctrl+C)
    once ``n`` trials have completed."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def on_trial_complete(self, trial):
        super().on_trial_complete(trial)
        if len(self.completed) == self.n:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_four_trials_over_dim_write_the_table_csv_and_pareto_plot(tmp_path, local_ray, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY, "tune": {"search": {"dim": [8, 12, 16, 24]}}}))
    code = main(["tune", "baseline_mt", "--config", str(config), "--plain", "--storage", str(tmp_path),
                 "--run-name", "dims"])
    out = capsys.readouterr().out
    assert code == 0, out
    folder = tmp_path / "dims"
    with (folder / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert sorted(int(r["dim"]) for r in rows) == [8, 12, 16, 24]
    assert {r["status"] for r in rows} == {"done"} and {r["step"] for r in rows} == {"4"}
    by_dim = sorted(rows, key=lambda r: int(r["dim"]))
    params = [int(r["params"]) for r in by_dim]
    macs = [int(r["macs"]) for r in by_dim]
    assert params == sorted(params) and len(set(params)) == 4  # a wider head, more weights
    assert macs == sorted(macs) and len(set(macs)) == 4
    scores = [float(r["objective:semseg/mIoU"]) for r in by_dim]
    assert scores == [float(r["semseg/mIoU"]) for r in by_dim]
    assert [r["pareto_macs"] == "1" for r in by_dim] == pareto_front(macs, scores, maximize=True)
    assert [r["pareto_params"] == "1" for r in by_dim] == pareto_front(params, scores, maximize=True)
    with Image.open(folder / "pareto.png") as image:
        assert image.format == "PNG" and image.size == (1200, 500)
    table = (folder / "results.txt").read_text()
    assert table.splitlines()[0].split() == ["trial", "status", "step", "dim", "params", "GMACs",
                                             "semseg/mIoU", "depth/rmse", "front"]
    assert table in out and "best: trial" in table and "delta_m: not computed" in table
    for r in rows:  # each trial trained in its own run folder, through the training runtime
        assert (folder / "trials" / r["trial_id"] / "step_00000004" / "model.safetensors").is_file()


def test_an_interrupted_sweep_resumes_without_repeating_finished_trials(tmp_path, local_ray):
    cfg = _config(tmp_path, "resumed", search={"dim": [8, 12, 16]})
    first = InterruptAfter(2)
    interrupted = run_sweep("baseline_mt", cfg, plain=True, progress=lambda line: None, listeners=[first])
    assert interrupted.interrupted and interrupted.planned == 3
    done = [r.trial_id for r in interrupted.rows if r.status == "done"]
    assert done == first.completed and len(done) == 2  # Tune creates the other trials as it goes
    stamps = {t: (tmp_path / "resumed" / "trials" / t / "step_00000004" / "meta.json").stat().st_mtime_ns
              for t in done}
    with pytest.raises(Exception, match="is not empty; pass --resume"):
        run_sweep("baseline_mt", cfg, plain=True, progress=lambda line: None)
    second = Events()
    resumed = run_sweep("baseline_mt", cfg, resume=True, plain=True, progress=lambda line: None,
                        listeners=[second])
    assert not resumed.interrupted
    assert len(resumed.rows) == 3 and {r.status for r in resumed.rows} == {"done"}
    assert sorted(r.values["dim"] for r in resumed.rows) == [8, 12, 16]
    assert not set(second.started) & set(done)  # the finished trials did not run again
    assert sorted(second.started) == sorted(r.trial_id for r in resumed.rows if r.trial_id not in done)
    for t in done:
        assert (tmp_path / "resumed" / "trials" / t / "step_00000004" / "meta.json").stat().st_mtime_ns == stamps[t]
        before = next(r for r in interrupted.rows if r.trial_id == t)
        after = next(r for r in resumed.rows if r.trial_id == t)
        assert after.metrics == before.metrics
    with (tmp_path / "resumed" / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3


def test_a_trial_with_a_bad_parameter_shows_its_spec_error_and_is_not_retried(tmp_path, local_ray):
    cfg = _config(tmp_path, "bad", search={"dim": [8, -8]})
    events = Events()
    result = run_sweep("baseline_mt", cfg, plain=True, progress=lambda line: None, listeners=[events])
    good, bad = sorted(result.rows, key=lambda r: -r.values["dim"])
    assert good.status == "done" and good.objective is not None
    assert bad.status == "error" and bad.objective is None and bad.params is None
    assert re.search(r"^baseline_mt\.mtl:\d+:\d+: error: argument 'width' of 'dense_head': value -8 is "
                     r"below the minimum 0$", bad.error, re.M)
    assert "^~~" in bad.error  # the source line with its caret
    assert events.errored == [bad.trial_id] and events.started.count(bad.trial_id) == 1
    assert f"trial {bad.trial_id} failed:\n{bad.error}" in result.table
    with (result.experiment_dir / "results.csv").open() as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert rows[bad.trial_id]["status"] == "error" and "below the minimum 0" in rows[bad.trial_id]["error"]


def test_asha_stops_a_weaker_trial_at_its_first_rung(tmp_path, local_ray):
    # lr 10 (Adam) scatters the weights: its depth RMSE at the first rung (step 2) is far worse
    # than the first trial's, so ASHA (reduction factor 2) stops it there.
    cfg = _config(tmp_path, "asha", search={"optimizer.lr": [0.01, 10.0]}, scheduler="asha",
                  metric="depth.rmse", reduction_factor=2)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"iterations": 6})})
    result = run_sweep("baseline_mt", cfg, plain=True, progress=lambda line: None)
    assert result.metric == "depth/rmse" and result.mode == "min"
    good, bad = sorted(result.rows, key=lambda r: r.values["optimizer.lr"])
    assert (good.status, good.step) == ("done", 6)
    assert (bad.status, bad.step) == ("stopped", 2)
    assert bad.objective > good.objective
    assert "stopped" in result.table


@pytest.mark.slow
def test_trials_run_on_ray_train_inside_tune(tmp_path, local_ray):
    cfg = _config(tmp_path, "ray", search={"dim": [8]})
    lines: list[str] = []
    result = run_sweep("baseline_mt", cfg, plain=False, progress=lines.append)
    (row,) = result.rows
    assert (row.status, row.step) == ("done", 4) and "semseg/mIoU" in row.metrics
    assert [line.split(":")[0] for line in lines if re.search(r" step \d+/", line)] == \
        [f"trial {row.trial_id} step 2/4", f"trial {row.trial_id} step 4/4"]  # reports through Ray Train
    run_dir = result.experiment_dir / "trials" / row.trial_id
    assert (run_dir / "step_00000004" / "model.safetensors").is_file()
    assert "training 4 steps on 1 worker(s)" in (run_dir / "console.log").read_text()
