"""Hybrids written by importing reference specs: they compile, train a step, and hold exactly the
parameters of the parts they reuse."""
from __future__ import annotations

import torch

from mtl_dsl.api import compile_model

TASKS = "semseg:5,depth,normals"
SIZE = (64, 64)
SMALL = {"backbone": "resnet18", "levels": [1, 2, 3]}


def params_under(model, prefix: str) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def train_one_step(model) -> float:
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(torch.randn(2, 3, *SIZE))
    loss = sum(v.pow(2).mean() for task in out.values() for v in task.values())
    loss.backward()
    opt.step()
    return loss.item()


def test_demt_encoder_then_tpanet_decoder():
    hybrid = compile_model("hybrid_demt_tpanet", tasks=TASKS, overrides=dict(SMALL, dim=32),
                           input_size=SIZE)
    demt = compile_model("demt", tasks=TASKS, overrides=dict(SMALL, dim=32), input_size=SIZE)
    tpanet = compile_model("tpanet", tasks=TASKS, overrides=dict(SMALL, dim=32), input_size=SIZE)
    parts = (params_under(demt, "feats.") + params_under(demt, "d.") + params_under(demt, "out.")
             + params_under(tpanet, "y."))
    assert sum(p.numel() for p in hybrid.parameters()) == parts
    assert params_under(hybrid, "y.") == params_under(tpanet, "y.")
    assert params_under(hybrid, "d.") == params_under(demt, "d.")
    assert torch.isfinite(torch.tensor(train_one_step(hybrid)))


def test_demt_features_into_invpt_decoder():
    hybrid = compile_model("hybrid_demt_invpt", tasks=TASKS, overrides={"backbone": "resnet18",
                                                                          "dim": 32},
                           input_size=SIZE)
    assert {t: list(v) for t, v in hybrid.output_names.items()} == {
        "semseg": ["final"], "depth": ["final"], "normals": ["final"]}
    assert torch.isfinite(torch.tensor(train_one_step(hybrid)))
