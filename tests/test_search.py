"""ATRC's context-type search: the supergraph block's rules (freezing, schedules, regulariser),
writing the found architecture back into the spec text, and a short search on synthetic data."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mtl_dsl.api import compile_model, load_ir
from mtl_dsl.modules.atrc import ContextSearch, linear_schedule, share_regulariser, should_freeze
from mtl_dsl.runtime.search import PairChoice, collect_choices, rewrite_search_table, write_found_spec

SPECS = Path(__file__).resolve().parents[1] / "specs"
TINY = {"backbone": "resnet18", "dim": 8}


def _block(pair=("semseg", "depth")) -> ContextSearch:
    return ContextSearch(4, 4, 2, pair)


def _inputs():
    torch.manual_seed(0)
    return (torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5), torch.randn(2, 3, 5, 5),
            torch.randn(2, 6, 5, 5))


def _logits_with_gap(gap: float, n: int = 5) -> torch.Tensor:
    """Logits whose softmax has top-1 minus top-2 = ``gap`` (the others share the rest)."""
    second = (1 - gap) / n
    rest = (1 - gap - 2 * second) / (n - 2)
    probs = torch.tensor([second + gap, second] + [rest] * (n - 2), dtype=torch.float64)
    return probs.log().float()


# -- the block's rules --------------------------------------------------------------------------------

@pytest.mark.parametrize("gap,fires", [(0.29, False), (0.2999, False), (0.3001, True), (0.31, True),
                                       (0.6, True)])
def test_freezing_rule_fires_when_the_probability_gap_passes_0_3(gap, fires):
    probabilities = torch.softmax(_logits_with_gap(gap), 0)
    assert should_freeze(probabilities, 0.3) is fires
    block = _block().train()
    with torch.no_grad():
        block.arch_logits.copy_(_logits_with_gap(gap))
    block(*_inputs())
    assert block.is_frozen is fires
    if fires:
        assert block.frozen.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_freezing_is_irreversible_and_kept_in_the_state_dict():
    block = _block().train()
    with torch.no_grad():
        block.arch_logits.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0]))  # global far ahead
    block(*_inputs())
    assert block.chosen() == "global"
    with torch.no_grad():
        block.arch_logits.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0]))  # s_label now ahead
    block(*_inputs())
    assert block.chosen() == "global"
    fresh = _block()
    fresh.load_state_dict(block.state_dict())
    assert fresh.is_frozen and fresh.chosen() == "global"


def test_diagonal_block_has_no_s_label_and_four_logits():
    block = _block(("edge", "edge"))
    assert block.candidate_names == ("none", "global", "local", "t_label")
    assert block.arch_logits.shape == (4,)
    assert not any(p.numel() == 0 for p in block.parameters())
    # value projections: BatchNorm without affine parameters, as the official supergraph
    for op in block.candidates.values():
        assert not op.value.bn.affine


def test_frozen_none_contributes_nothing_and_the_mixture_is_convex():
    block = _block().train()
    target, source, t_aux, s_aux = _inputs()
    with torch.no_grad():
        block.arch_logits.copy_(torch.tensor([4.0, 0.0, 0.0, 0.0, 0.0]))
    assert torch.count_nonzero(block(target, source, t_aux, s_aux)) == 0
    block.eval()
    assert torch.count_nonzero(block(target, source, t_aux, s_aux)) == 0
    weights = _block().train().mixture_weights()
    assert weights.shape == (5,) and math.isclose(weights.sum().item(), 1.0, rel_tol=1e-6)
    assert (weights > 0).all()  # hard=False: a soft sample


def test_schedules_are_linear_from_the_official_start_to_end():
    block = _block()
    block.on_train_step(0, 400)
    assert block.tau == 1.0 and block.entropy_weight == pytest.approx(-0.02)
    block.on_train_step(100, 400)  # the regulariser weight crosses zero at 25 %
    assert block.entropy_weight == pytest.approx(0.0, abs=1e-12)
    block.on_train_step(400, 400)
    assert block.tau == pytest.approx(0.05) and block.entropy_weight == pytest.approx(0.06)
    assert linear_schedule(1.0, 0.05, 200, 400) == pytest.approx(0.525)


def test_regulariser_sums_to_weight_times_mean_entropy_over_blocks():
    blocks = [_block(), _block(("depth", "depth")), _block(("depth", "semseg"))]
    with torch.no_grad():
        blocks[0].arch_logits.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0]))
    for b in blocks:  # the runtime's round of hooks before one step
        b.on_train_step(300, 400)
    total = sum(b.extra_loss() for b in blocks)
    entropies = [b.entropy().item() for b in blocks]
    assert total.item() == pytest.approx(0.04 * sum(entropies) / 3, rel=1e-5)
    assert entropies[1] == pytest.approx(math.log(4))
    for b in blocks:  # next step: the same blocks form the next round
        b.on_train_step(301, 400)
    assert sum(b.extra_loss() for b in blocks).item() == pytest.approx(
        linear_schedule(-0.02, 0.06, 301, 400) * sum(entropies) / 3, rel=1e-5)


def test_supergraph_hooks_on_a_compiled_spec():
    model = compile_model("atrc", tasks="semseg,depth,edge", overrides=TINY, input_size=(32, 32))
    blocks = share_regulariser(model)
    assert len(blocks) == 9
    arch = [p for b in blocks for p in b.arch_parameters()]
    assert sum(p.numel() for p in arch) == 3 * 4 + 6 * 5
    assert set(model.output_names["edge"]) == {"final", "aux"}  # aux heads for every task
    assert all(not isinstance(m, torch.nn.Dropout2d) for m in model.modules())


# -- writing the found spec -----------------------------------------------------------------------

MIXED = '''import "atrc.mtl"

model mixed(backbone = "resnet18", dim: int = 8) {
  table ctx {
    semseg <- semseg: search, depth: global   # a comment stays
    depth  <- *: search
    *      <- semseg: t_label, *: search
  }
  feats = backbone(backbone, levels = [1, 2, 3, 4])
  x = upsample_concat(feats)
  res = atrc_head(x, ctx, dim = dim)
  for t in tasks {
    out[t] = res[t]["final"]
    if needs_labels(ctx, "table", t) {
      out[t].aux = res[t]["aux"]
    }
  }
}
'''


def _kinds(ir) -> dict[str, str]:
    return {n.name.removeprefix("res.c."): n.params["kind"] for n in ir.nodes
            if n.block == "context_pool"}


def _choice(t: str, s: str, kind: str) -> PairChoice:
    names = ["none", "global", "local", "t_label"] + ([] if t == s else ["s_label"])
    return PairChoice(t, s, kind, {k: 1.0 / len(names) for k in names}, frozen=False)


def test_found_spec_rewrites_explicit_and_default_entries(tmp_path):
    spec = tmp_path / "mixed.mtl"
    spec.write_text(MIXED)
    tasks = "semseg,depth,edge"
    ir = load_ir(spec, tasks=tasks, input_size=(32, 32))
    assert _kinds(ir) == {f"{t}.{s}": ("global" if (t, s) == ("semseg", "depth") else
                                      "t_label" if (t, s) == ("edge", "semseg") else "search")
                          for t in ["semseg", "depth", "edge"] for s in ["semseg", "depth", "edge"]}
    chosen = {("semseg", "semseg"): "local", ("semseg", "edge"): "s_label",
              ("depth", "semseg"): "none", ("depth", "depth"): "t_label", ("depth", "edge"): "global",
              ("edge", "depth"): "s_label", ("edge", "edge"): "none"}
    choices = [_choice(t, s, k) for (t, s), k in chosen.items()]
    found = write_found_spec(spec, choices, tmp_path / "out.mtl", tasks=tasks, input_size=(32, 32))
    text = found.read_text()
    assert "search" not in text.split("table ctx")[1].split("}")[0]
    assert "# a comment stays" in text
    kinds = _kinds(load_ir(found, tasks=tasks, input_size=(32, 32)))
    expected = {f"{t}.{s}": k for (t, s), k in chosen.items() if k != "none"}
    expected.update({"semseg.depth": "global", "edge.semseg": "t_label"})
    assert kinds == expected
    compile_model(found, tasks=tasks, input_size=(32, 32))
    # by default the found spec goes beside a user's spec, so its relative imports still work
    beside = write_found_spec(spec, choices, tasks=tasks, input_size=(32, 32))
    assert beside == tmp_path / "mixed_found.mtl" and beside.read_text() == text


def test_rewrite_of_a_default_row_keeps_its_other_entries():
    source = 'model m() {\n  table ctx {\n    * <- semseg: global, *: search\n  }\n}\n'

    class Loc:
        def __init__(self, line, column, length):
            self.file, self.line, self.column, self.length = "m.mtl", line, column, length

    class Entry:
        def __init__(self, target, src, value, loc):
            self.table, self.target, self.source, self.value, self.loc = "ctx", target, src, value, loc

    entries = [Entry("*", "semseg", "global", Loc(3, 18, 6)), Entry("*", "*", "search", Loc(3, 29, 6))]
    choices = [_choice("semseg", "depth", "local"), _choice("depth", "depth", "none")]
    text = rewrite_search_table(source, entries, choices, ["semseg", "depth"])
    body = text.split("table ctx {")[1]
    assert "semseg <- depth: local" in body and "depth  <- depth: none" in body
    assert "* <- semseg: global\n" in body and "search" not in body


def test_a_spec_without_search_entries_is_refused(tmp_path):
    from mtl_dsl.errors import SpecError

    with pytest.raises(SpecError, match="search"):
        write_found_spec(SPECS / "atrc_nyud_hrnet18.mtl", [], tmp_path, tasks="nyud")


# -- a short search through the training runtime ------------------------------------------------

def test_short_search_on_synthetic_data_writes_a_spec_that_compiles(tmp_path):
    """Plain (in-process) mode of run_training: the same loop Ray Train runs on every worker."""
    from mtl_dsl.runtime.config import load_config
    from mtl_dsl.runtime.search import search

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add synchronisation
    try:
        _short_search(tmp_path, load_config, search)
    finally:
        torch.set_num_threads(threads)


def _short_search(tmp_path, load_config, search):
    cfg = load_config(overrides={
        "tasks": "semseg,depth",
        "model": {"overrides": TINY},
        "dataset": {"length": 16, "val_length": 2},
        "training": {"iterations": 200, "batch_size": 2, "input_size": [32, 32], "augment": False,
                     "eval_interval": 0, "checkpoint_interval": 0, "log_interval": 100,
                     "eval_batches": 1},
        "optimizer": {"name": "sgd", "lr": 0.01, "arch_lr": 0.05},
        "run": {"storage": str(tmp_path / "runs"), "name": "search"},
    })
    result = search("atrc", cfg, output=tmp_path / "atrc_found.mtl", plain=True,
                    progress=lambda record: None)
    assert result.step == 200 and result.found_spec == tmp_path / "atrc_found.mtl"
    assert {(c.target, c.source) for c in result.choices} == {
        (t, s) for t in ("semseg", "depth") for s in ("semseg", "depth")}
    # 200 steps of Adam at 0.05 moved the logits away from their uniform start
    assert any(max(c.probabilities.values()) > 0.3 for c in result.choices)
    genotype = json.loads((result.run_dir / "atrc_genotype.json").read_text())
    assert genotype["step"] == 200 and set(genotype["data"]) == {"semseg", "depth"}
    found = compile_model(result.found_spec, tasks="semseg,depth", overrides=TINY,
                          input_size=(32, 32))
    assert not any(isinstance(m, ContextSearch) for m in found.modules())
    with torch.no_grad():
        out = found.eval()(torch.randn(1, 3, 32, 32))
    assert out["semseg"]["final"].shape == (1, 7, 32, 32)
    # the searched model in eval mode computes the same contexts as the model of the found spec
    searched = compile_model("atrc", tasks="semseg,depth", overrides=TINY, input_size=(32, 32))
    from mtl_dsl.runtime.checkpoints import load_checkpoint, load_model_weights

    load_model_weights(searched, load_checkpoint(result.checkpoint))
    assert [c.chosen for c in collect_choices(searched)] == [c.chosen for c in result.choices]
