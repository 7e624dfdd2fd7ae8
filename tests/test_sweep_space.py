"""Search spaces of ``mtl-dsl tune`` (no Ray): the expression syntax, the ``tune:`` section of a run
config, the Pareto front and the results files."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from mtl_dsl.errors import SpecError
from mtl_dsl.runtime.config import load_config
from mtl_dsl.runtime.sweep_results import TrialRow, mark_fronts, pareto_front, write_results
from mtl_dsl.runtime.sweep_space import (DISTRIBUTIONS, Dimension, SearchSyntaxError, budget_seconds,
                                         normalise_metric, parse_dimension, parse_search_flag)

words = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda w: w not in ("true", "false", "none"))
scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False,
                                                          width=64), words, st.text(max_size=6),
                    st.booleans(), st.none())
values = st.one_of(scalars, st.lists(scalars, max_size=3))


@st.composite
def dimensions(draw) -> Dimension:
    key = draw(st.sampled_from(["dim", "depth", "backbone", "optimizer.lr", "training.batch_size"]))
    kind = draw(st.sampled_from(["grid", "choice", *DISTRIBUTIONS]))
    if kind in ("grid", "choice"):
        return Dimension(key, kind, tuple(draw(st.lists(values, min_size=1, max_size=4))))
    names, integer = DISTRIBUTIONS[kind]
    number = st.integers(1, 1000) if integer else st.floats(1e-6, 1e3)
    lo = draw(number)
    hi = lo + draw(st.integers(1, 1000) if integer else st.floats(1e-3, 1e3))
    if kind in ("randn", "qrandn"):
        args = [lo, hi - lo]
    else:
        args = [lo, hi]
    if len(names) == 3:
        args.append(draw(number))
    return Dimension(key, kind, tuple(args))


@settings(max_examples=300, deadline=None)
@given(dimensions())
def test_a_dimension_reads_back_from_its_text(dim):
    again = parse_dimension(dim.key, dim.text())
    assert again == dim
    assert again.target == ("run" if "." in dim.key else "model")


def test_lists_are_grids_and_calls_are_tune_distributions():
    from ray import tune

    assert parse_dimension("dim", "[64, 128, 256]").to_tune() == tune.grid_search([64, 128, 256])
    lr = parse_dimension("optimizer.lr", "loguniform(1e-4, 1e-2)")
    assert (lr.kind, lr.args, lr.target) == ("loguniform", (1e-4, 1e-2), "run")
    domain = lr.to_tune()
    samples = [domain.sample() for _ in range(200)]
    assert all(1e-4 <= s <= 1e-2 for s in samples)
    backbone = parse_dimension("backbone", 'choice(resnet18, "swin_tiny_patch4_window7_224", none)')
    assert backbone.args == ("resnet18", "swin_tiny_patch4_window7_224", None)
    assert parse_dimension("levels", "[[1, 2], [1, 2, 3, 4]]").args == ([1, 2], [1, 2, 3, 4])
    assert parse_dimension("depth", "randint(1, 4)").candidates() == [1, 3]  # Tune excludes hi
    assert parse_dimension("preset", "[hrnet18, swin_t]").target == "preset"


@pytest.mark.parametrize("text, message, column", [
    ("64", "is one value, not a search", 1),
    ("[64, 128", "unexpected end", 9),
    ("loguniform(0, 1)", "lo must be positive on a log scale", 1),
    ("uniform(2, 1)", "lo must be below hi", 1),
    ("randint(1.5, 3)", "lo must be an integer", 1),
    ("uniform(1)", "takes 2 numbers, got 1", 1),
    ("gaussian(0, 1)", "unknown search 'gaussian(...)'", 1),
    ("choice(uniform(0, 1))", "distributions cannot be nested", 8),
    ("[]", "needs at least one value", 1),
])
def test_mistakes_name_the_place_in_the_expression(text, message, column):
    with pytest.raises(SearchSyntaxError) as info:
        parse_dimension("dim", text)
    assert message in info.value.message and info.value.column == column


def test_a_search_flag_error_shows_the_flag_with_a_caret():
    with pytest.raises(SpecError) as info:
        parse_search_flag("optimizer.lr=loguniform(0, 1)")
    assert info.value.render().splitlines()[:3] == [
        "--search:1:14: error: loguniform: lo must be positive on a log scale, got 0",
        "    1 | optimizer.lr=loguniform(0, 1)",
        "      |              ^"]
    with pytest.raises(SpecError, match="expected KEY=VALUES"):
        parse_search_flag("dim")


def test_the_tune_section_of_a_run_config_is_validated_with_its_line(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("tune:\n  search:\n    dim: [64, 128]\n    optimizer.lr: loguniform(1e-4, 1e-2)\n"
                    "  samples: 2\n  scheduler: asha\n  metric: semseg.mIoU\n  budget: 1h30m\n")
    cfg = load_config(good)
    assert [d.text() for d in cfg.tune.dimensions()] == ["[64, 128]", "loguniform(0.0001, 0.01)"]
    assert (cfg.tune.samples, cfg.tune.scheduler, budget_seconds(cfg.tune.budget)) == (2, "asha", 5400)
    assert RunConfigRoundTrip.of(cfg) == cfg.tune
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  iterations: 10\ntune:\n  search:\n    dim: [64, 128]\n"
                   "    optimizer.lr: loguniform(1e-2, 1e-4)\n")
    with pytest.raises(SpecError) as info:
        load_config(bad)
    assert info.value.line == 6 and str(bad) in info.value.file
    assert "key 'tune.search.optimizer.lr'" in info.value.message
    assert "lo must be below hi" in info.value.message
    typo = tmp_path / "typo.yaml"
    typo.write_text("tune:\n  sheduler: asha\n")
    with pytest.raises(SpecError, match="unknown key 'tune.sheduler'"):
        load_config(typo)


class RunConfigRoundTrip:
    @staticmethod
    def of(cfg):
        """The tune section after the run config is dumped and validated again (a trial's way)."""
        from mtl_dsl.runtime.config import RunConfig

        return RunConfig.model_validate(cfg.dump()).tune


def test_budgets_and_metric_names():
    assert [budget_seconds(v) for v in (90, "90", "90s", "30m", "2h", "1h30m", 0.5)] == \
        [90, 90, 90, 1800, 7200, 5400, 0.5]
    for bad in ("soon", "-5", 0, "1x", True):
        with pytest.raises(ValueError):
            budget_seconds(bad)
    assert normalise_metric("semseg.mIoU") == normalise_metric("semseg/mIoU") == "semseg/mIoU"
    assert normalise_metric("delta_m") == "delta_m"
    with pytest.raises(ValueError):
        normalise_metric("mIoU")


# -- the Pareto front --------------------------------------------------------------------------------------


def _front_by_sweep(costs, values, maximize):
    """The same front by another route: sorted by cost (ties: best first), a point is on it when
    it beats every cheaper point, or equals the best among points of its own cost."""
    sign = 1 if maximize else -1
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -sign * values[i]))
    front = [False] * len(costs)
    best_cheaper = None  # best value among strictly cheaper points
    i = 0
    while i < len(order):
        same = [j for j in order[i:] if costs[j] == costs[order[i]]]
        top = max(sign * values[j] for j in same)
        for j in same:
            front[j] = sign * values[j] == top and (best_cheaper is None or top > best_cheaper)
        best_cheaper = top if best_cheaper is None else max(best_cheaper, top)
        i += len(same)
    return front


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=12),
       st.booleans())
def test_the_pareto_front_is_the_set_of_undominated_trials(points, maximize):
    costs, values = [p[0] for p in points], [p[1] for p in points]
    front = pareto_front(costs, values, maximize)
    assert front == _front_by_sweep(costs, values, maximize)
    assert any(front)  # the cheapest best point is always on it
    best = max(values) if maximize else min(values)
    assert any(on and v == best for on, v in zip(front, values))


def _row(trial, dim, params, macs, objective, status="done", error=""):
    return TrialRow(trial_id=trial, status=status, step=4 if status == "done" else 0,
                    values={"dim": dim}, params=params, macs=macs,
                    metrics={} if objective is None else {"semseg/mIoU": objective, "depth/rmse": 1.0},
                    objective=objective, error=error)


def test_results_files_have_one_row_per_trial_and_a_plot_of_fixed_size(tmp_path):
    sweep = {"search": {"dim": "[8, 16, 32, -8]"}, "metric": "semseg/mIoU", "metric_key": "val/semseg/mIoU",
             "mode": "max", "baseline": None, "iterations": 4,
             "config": load_config(overrides={"tasks": "semseg,depth"}).dump()}
    rows = [_row("a_00000", 8, 100, 1_000, 10.0), _row("a_00001", 16, 200, 2_000, 12.0),
            _row("a_00002", 32, 400, 4_000, 11.0),
            _row("a_00003", -8, None, None, None, "error", "spec.mtl:1:2: error: width below 0\n  | ^")]
    mark_fronts(rows, maximize=True)
    assert [r.front_macs for r in rows] == [True, True, False, False]
    table, files = write_results(rows, sweep, tmp_path)
    with files["csv"].open() as f:
        written = list(csv.DictReader(f))
    assert [r["trial_id"] for r in written] == [r.trial_id for r in rows]
    assert written[3]["status"] == "error" and written[3]["error"] == "spec.mtl:1:2: error: width below 0"
    assert [r["pareto_params"] for r in written] == ["1", "1", "0", "0"]
    with Image.open(files["plot"]) as image:
        assert image.size == (1200, 500)
    assert "best: trial a_00001 (dim=16): semseg/mIoU 12" in table
    assert "trial a_00003 failed:\nspec.mtl:1:2: error: width below 0\n  | ^" in table
    # no trial with the metric: still a plot (saying so) and a CSV
    _, files = write_results(rows[3:], sweep, tmp_path)
    with Image.open(files["plot"]) as image:
        assert image.size == (1200, 500)


def test_statuses_of_tune_trials():
    from mtl_dsl.runtime.sweep_results import _status

    assert _status(SimpleNamespace(status="ERROR"), 0, 4) == "error"
    assert _status(SimpleNamespace(status="TERMINATED"), 4, 4) == "done"
    assert _status(SimpleNamespace(status="TERMINATED"), 2, 4) == "stopped"
    assert _status(SimpleNamespace(status="PENDING"), 0, 4) == "unfinished"


TINY_RUN = ("tasks: semseg,depth\nmodel:\n  overrides: {backbone: resnet18, levels: [1, 2]}\n"
            "training: {iterations: 2, batch_size: 2, input_size: [32, 32]}\n")


@pytest.mark.parametrize("tune_lines, flags, expected", [
    # a setting of the run config's tune: section is named at its YAML key, not at a flag
    ("tune:\n  search:\n    nope: [1, 2]\n", [],
     ":7:5: error: key 'tune.search.nope': model 'baseline_mt' has no parameter 'nope' "
     "(parameters: backbone, dim, levels, pretrained)"),
    ("tune:\n  search:\n    dim: [8]\n  metric: semseg.nope\n", [],
     ":8:3: error: key 'tune.metric': unknown metric 'semseg.nope' (did you mean 'semseg/mIoU'?)"),
    ("tune:\n  search:\n    optimizer.lrr: [0.1]\n", [],
     ":7:5: error: key 'tune.search.optimizer.lrr': unknown key 'optimizer.lrr' "
     "(trial values: optimizer.lrr=0.1) (did you mean 'lr'?)"),
    # the same mistakes as flags keep the flag, with the value and a caret
    ("", ["--search", "optimizer.lrr=[0.1]"],
     "--search:1:1: error: unknown key 'optimizer.lrr' (trial values: optimizer.lrr=0.1)"),
    ("", ["--search", "dim=[8]", "--metric", "semseg.nope"],
     "--metric:1:1: error: unknown metric 'semseg.nope'"),
    # one key searched by two flags: the first was silently dropped
    ("", ["--search", "dim=[8]", "--search", "dim=[16]"],
     "--search:1:1: error: 'dim' is searched twice: --search dim=[8] and --search dim=[16]"),
])
def test_sweep_mistakes_are_located_where_they_were_written(tmp_path, capsys, tune_lines, flags,
                                                            expected):
    from mtl_dsl.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(TINY_RUN + tune_lines)
    code = main(["tune", "baseline_mt", "--config", str(config), "--plain", "--storage",
                 str(tmp_path / "runs"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    first = err.splitlines()[0]
    assert first == (str(config) + expected if expected.startswith(":") else expected), err
    assert not (tmp_path / "runs").exists()



def test_a_baseline_file_that_is_not_there_is_named_at_its_key(tmp_path, capsys):
    """`tune: {baseline: st.yaml}` naming no file said only `st.yaml: error: ...`, not which
    key of which file named it, nor where a relative path is read from."""
    from mtl_dsl.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(TINY_RUN + "tune:\n  search:\n    dim: [8]\n  baseline: st.yaml\n")
    args = ["tune", "baseline_mt", "--config", str(config), "--plain", "--storage",
            str(tmp_path / "runs")]
    assert main(args) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"{config}:8:3: error: key 'tune.baseline': baseline file not found: "
                            f"st.yaml (a relative path is read from the working directory, ")
    assert main([*args, "--baseline", "other.yaml"]) == 2
    assert capsys.readouterr().err.splitlines()[:3] == [
        "--baseline:1:1: error: baseline file not found: other.yaml", "    1 | other.yaml",
        "      | ^"]
