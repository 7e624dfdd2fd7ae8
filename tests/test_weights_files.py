"""Reading checkpoint files as the official repositories release them, never running code."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mtl_dsl.errors import SpecError
from mtl_dsl.weights.files import read_weights

STATE = {"backbone.conv1.weight": torch.randn(4, 3, 3, 3).half(),
         "head.final_logits.semseg.bias": torch.randn(40).half(),
         "head.bn.num_batches_tracked": torch.tensor(7)}


def same(tensors: dict, expected: dict = STATE) -> bool:
    return sorted(tensors) == sorted(expected) and all(torch.equal(tensors[k], v)
                                                       for k, v in expected.items())


def test_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(STATE, str(path))
    weights = read_weights(path)
    assert weights.format == "safetensors" and same(weights.tensors)
    assert weights.dtypes() == ["float16", "int64"] and len(weights.sha256) == 64


@pytest.mark.parametrize("legacy", [False, True])
def test_bare_state_dict_zip_and_legacy_pickle(tmp_path, legacy):
    path = tmp_path / "w.pth"
    torch.save(collections.OrderedDict(STATE), path, _use_new_zipfile_serialization=not legacy)
    weights = read_weights(path)
    assert weights.format == "torch" and weights.wrapper == "" and same(weights.tensors)


def test_lightning_checkpoint_keeps_the_model_member(tmp_path):
    # ATRC/DeMT/TPANet train a LightningModule holding the network as `self.model`.
    content = {"epoch": 3, "global_step": 40000, "pytorch-lightning_version": "1.2.10",
               "state_dict": {**{f"model.{k}": v for k, v in STATE.items()},
                              "criterion.loss_ft.semseg.weight": torch.ones(2)},
               "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}],
               "hyper_parameters": {"lr": 0.01, "tasks": ["semseg"]}}
    path = tmp_path / "last.ckpt"
    torch.save(content, path)
    weights = read_weights(path)
    assert weights.wrapper == "lightning" and weights.stripped == "model." and same(weights.tensors)
    assert list(weights.set_aside) == ["criterion.loss_ft.semseg.weight"]
    assert "LightningModule" in weights.set_aside["criterion.loss_ft.semseg.weight"]


def test_dataparallel_prefix_and_invpt_model_wrapper(tmp_path):
    # InvPT saves {'model': ddp.state_dict(), 'optimizer': ..., 'epoch': ...}.
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"model": {f"module.{k}": v for k, v in STATE.items()}, "epoch": 9,
                "optimizer": {"state": {}, "param_groups": []}}, path)
    weights = read_weights(path)
    assert weights.wrapper == "model" and weights.stripped == "module." and same(weights.tensors)


def test_mmseg_checkpoint_under_state_dict_with_meta(tmp_path):
    path = tmp_path / "upernet.pth"
    torch.save({"meta": {"CLASSES": ("wall", "floor"), "PALETTE": [[1, 2, 3]], "iter": 160000},
                "state_dict": dict(STATE)}, path)
    weights = read_weights(path)
    assert weights.wrapper == "mmseg" and same(weights.tensors)


class Hyper:  # a class of the training script, pickled into the checkpoint
    lr = 0.01


def test_a_pickled_class_is_refused_not_run(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": dict(STATE), "args": Hyper()}, path)
    with pytest.raises(SpecError) as info:
        read_weights(path)
    message = info.value.message
    assert "refusing to load" in message and f"`{Hyper.__module__}.Hyper`" in message
    assert "would run code" in message


def _payload(marker: str) -> None:
    Path(marker).write_text("ran")


def test_a_reduce_payload_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (_payload, (str(marker),))

    path = tmp_path / "payload.pth"
    torch.save({"a": torch.ones(1), "x": Payload()}, path)
    with pytest.raises(SpecError) as info:
        read_weights(path)
    assert f"`{_payload.__module__}._payload`" in info.value.message
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy"])
def test_truncated_files_are_named(tmp_path, kind):
    path = tmp_path / f"w.{kind}"
    if kind == "safetensors":
        save_file(STATE, str(path))
    else:
        torch.save(dict(STATE), path, _use_new_zipfile_serialization=kind == "zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpecError) as info:
        read_weights(path)
    assert str(path) in info.value.message and "truncated" in info.value.message


def test_not_a_weights_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(SpecError, match="neither a .safetensors file nor a torch checkpoint"):
        read_weights(path)
    with pytest.raises(SpecError, match="weights file not found"):
        read_weights(tmp_path / "missing.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(SpecError, match="holds no tensors"):
        read_weights(empty)
