"""The official-name generators of ``official_names`` reproduce the official code's own
state_dicts: the golden fixtures' key lists and shapes (NYUD-v2), InvPT's ``keys.json`` and the
published parameter count of the mmseg Swin-T. They are then trusted for the task sets and sizes
no fixture covers (``test_weights_maps.py``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import official_names as on
from mtl_dsl.tasks import resolve_tasks

RESOURCES = Path(__file__).resolve().parents[1] / "mtl_dsl" / "resources"


def genotype(name: str) -> dict:
    return json.loads((RESOURCES / f"{name}.json").read_text())["data"]


# -- the generators reproduce the official code's state_dicts -----------------------------------

@pytest.mark.parametrize("fixture, head", [
    ("baseline_mt", lambda p: on.fcn_head(p, 270)),
    ("demt", lambda p: on.demt_head(p, 270, 128)),
    ("tpanet", lambda p: on.tpanet_head(p, 270, 107 * 140)),
    ("atrc_genotype", lambda p: on.atrc_head(p, 270, genotype("atrc_nyud_hrnet18"))),
])
def test_official_names_reproduce_the_golden_key_lists(fixture, head):
    meta = json.loads((on.GOLDEN / fixture / "meta.json").read_text())
    generated = {**on.hrnet18_backbone(), **head(resolve_tasks("nyud"))}
    assert sorted(generated) == sorted(meta["state_dict_keys_in_order"])
    assert generated == on.golden_shapes(fixture)


def test_official_names_reproduce_invpt_keys_json():
    keys = on.invpt_keys()
    rows = {name: tuple(shape) for name, shape, _ in keys["state_dict"]}
    generated = on.invpt(resolve_tasks("nyud"), (448, 576))
    assert generated == rows and on.parameter_count(generated) == keys["total_params"] == 402_092_888


def test_mmseg_swin_t_holds_the_published_parameter_count():
    # DeMT / TPANet's Swin-T with its four output norms: 27,520,698 parameters.
    assert on.parameter_count(on.swin_mmseg()) == 27_520_698
