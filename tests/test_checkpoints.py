"""Checkpoints: safetensors + JSON, atomic writes, refusal of a different graph, corrupt files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mtl_dsl.errors import SpecError, UsageError
from mtl_dsl.runtime import checkpoints as ck


def _model(width: int = 4, extra: bool = False) -> nn.Module:
    layers = [nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.Conv2d(width, 2, 1)]
    if extra:
        layers.append(nn.Conv2d(2, 2, 1))
    return nn.Sequential(*layers)


def _save(path, model, step=1, optimizer=None):
    tensors, info = {}, {}
    if optimizer is not None:
        tensors, info = ck.flatten_optimizer(optimizer.state_dict(), "main")
    return ck.save_checkpoint(path, model.state_dict(), tensors,
                              {"step": step, "optimizer": {"main": info}, "ir_hash": "abc"})


def test_roundtrip_model_and_optimizer_state(tmp_path):
    torch.manual_seed(0)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-6)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    path = _save(tmp_path / "step_1", model, 1, opt)
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "optimizer.safetensors"]
    loaded = ck.load_checkpoint(path)
    assert loaded.step == 1 and loaded.meta["format"] == ck.FORMAT
    fresh = _model()
    ck.load_model_weights(fresh, loaded)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1.0)
    opt2.load_state_dict(ck.unflatten_optimizer(loaded.state_tensors, loaded.meta["optimizer"]["main"], "main"))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.99) and opt2.param_groups[0]["lr"] == 1e-3
    for p in model.parameters():
        q = dict(zip(map(id, model.parameters()), fresh.parameters()))[id(p)]
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
    # no pickle anywhere: each tensor file is safetensors (an 8-byte header length, then that
    # many bytes of JSON naming every tensor), meta.json is JSON
    for name in ("model.safetensors", "optimizer.safetensors"):
        _assert_safetensors(path / name)
    assert json.loads((path / "meta.json").read_text())["step"] == 1


def _assert_safetensors(file):
    import struct

    data = file.read_bytes()
    assert data[:1] != b"\x80" and data[:2] != b"PK"  # neither a pickle nor torch.save's zip
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert tensors and all({"dtype", "shape", "data_offsets"} <= set(v) for v in tensors.values())
    assert 8 + length + max(v["data_offsets"][1] for v in tensors.values()) == len(data)


def test_the_safetensors_check_tells_a_pickle_from_safetensors(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pickled.pt")
    with pytest.raises(AssertionError):
        _assert_safetensors(tmp_path / "pickled.pt")


def test_crash_mid_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = _model()
    first = _save(tmp_path / "step_1", model, 1)
    before = (first / "model.safetensors").read_bytes()
    real = ck.save_file
    calls = []

    def crash_on_second_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", crash_on_second_file)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path / "step_2", model, 2)
    with pytest.raises(OSError, match="simulated"):  # also when replacing a checkpoint of the same name
        calls.clear()
        _save(tmp_path / "step_1", model, 1)
    assert not (tmp_path / "step_2").exists()
    assert (first / "model.safetensors").read_bytes() == before
    assert ck.latest_checkpoint(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["step_1"]  # no half-written folder left


def test_a_partial_temp_dir_is_ignored_by_readers(tmp_path):
    model = _model()
    _save(tmp_path / "step_1", model, 1)
    partial = tmp_path / ".step_2.tmp-99999-deadbeef"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert ck.latest_checkpoint(tmp_path).name == "step_1"
    assert ck.resolve_checkpoint(tmp_path).name == "step_1"
    ck.prune_checkpoints(tmp_path, keep=1)
    assert not partial.exists()


def test_mismatched_graph_is_refused_listing_the_keys(tmp_path):
    path = _save(tmp_path / "ck", _model(width=4), 1)
    with pytest.raises(SpecError) as info:
        ck.check_matches(_model(width=5, extra=True), path)
    message = str(info.value)
    assert "does not match the spec's graph" in message
    assert "missing 2: 3.bias, 3.weight" in message
    assert "0.weight (checkpoint [4, 3, 3, 3], model [5, 3, 3, 3])" in message
    with pytest.raises(SpecError, match="unexpected 2: 3.bias, 3.weight"):
        ck.check_matches(_model(width=4), _save(tmp_path / "ck2", _model(width=4, extra=True), 1))


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.safetensors", "meta.json"])
def test_corrupt_file_is_named(tmp_path, victim):
    path = _save(tmp_path / "ck", _model(), 1)
    (path / victim).write_bytes(b"\x00\x01garbage")
    with pytest.raises(SpecError) as info:
        ck.load_checkpoint(path)
    assert str(path / victim) in str(info.value)


def test_checkpoint_errors_name_the_file_without_a_made_up_position(tmp_path):
    path = _save(tmp_path / "ck", _model(), 1)
    (path / "model.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(UsageError) as info:
        ck.load_checkpoint(path)
    assert str(info.value).startswith(f"{path / 'model.safetensors'}: error: corrupt checkpoint file ")
    with pytest.raises(UsageError) as info:
        ck.read_meta(tmp_path)
    assert str(info.value) == f"{tmp_path / 'meta.json'}: error: not a checkpoint (no meta.json): {tmp_path}"


def test_official_weight_file_errors_have_no_made_up_position(tmp_path):
    from mtl_dsl.errors import simple_error
    from mtl_dsl.weights.files import read_weights

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\0garbage" * 10)
    with pytest.raises(SpecError) as info:  # train --init / eval --weights FILE
        read_weights(garbage)
    assert str(info.value) == (f"{garbage}: error: {garbage} is neither a .safetensors file nor a torch "
                               f"checkpoint (.pth, .pth.tar, .ckpt)")
    with pytest.raises(SpecError) as info:
        read_weights(tmp_path / "nope.pth")
    assert str(info.value) == f"{tmp_path / 'nope.pth'}: error: weights file not found: {tmp_path / 'nope.pth'}"
    quoted = simple_error("--search", "bad value", source_line="dim=[1,")  # a quoted flag value
    assert str(quoted).splitlines()[:2] == ["--search:1:1: error: bad value", "    1 | dim=[1,"]


def test_missing_checkpoint_and_keep_newest(tmp_path):
    with pytest.raises(SpecError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "nope")
    for step in (1, 2, 3):
        _save(tmp_path / f"step_{step}", _model(), step)
    ck.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2", "step_3"]
    meta = json.loads((tmp_path / "step_3" / "meta.json").read_text())
    assert meta["step"] == 3


def test_ir_hash_is_sha256_of_the_ir_json():
    import hashlib

    assert ck.ir_hash('{"a": 1}') == hashlib.sha256(b'{"a": 1}').hexdigest()
    assert ck.ir_hash(None) == ""


def test_a_full_disk_is_one_line_naming_the_folder_and_the_size(tmp_path, monkeypatch):
    import errno

    from mtl_dsl.runtime.failures import CheckpointWriteError

    model = nn.Conv2d(3, 1024, 16)  # 786,432 + 1,024 floats: 3.0 MiB
    first = _save(tmp_path / "step_1", model, 1)

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(CheckpointWriteError) as info:
        _save(tmp_path / "step_2", model, 2)
    assert str(info.value) == f"no space left on device while writing {tmp_path / 'step_2'} (4 MB needed)"
    assert ck.latest_checkpoint(tmp_path) == first and not (tmp_path / "step_2").exists()


def test_a_full_disk_as_the_safetensors_library_reports_it(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from mtl_dsl.runtime.failures import CheckpointWriteError

    model = nn.Conv2d(3, 1024, 16)
    first = _save(tmp_path / "step_1", model, 1)

    def full(tensors, filename, metadata=None):  # the library's own words on a full disk
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(CheckpointWriteError) as info:
        _save(tmp_path / "step_2", model, 2)
    assert str(info.value) == f"no space left on device while writing {tmp_path / 'step_2'} (4 MB needed)"
    assert ck.latest_checkpoint(tmp_path) == first and not (tmp_path / "step_2").exists()
    assert not list(tmp_path.glob(".step_2.tmp-*"))

    def broken(tensors, filename, metadata=None):  # another library error stays what it is
        raise SafetensorError("tensors share memory")

    monkeypatch.setattr(ck, "save_file", broken)
    with pytest.raises(SafetensorError, match="share memory"):
        _save(tmp_path / "step_3", model, 3)


def test_a_checkpoint_pruned_by_a_live_run_while_it_is_read_is_chosen_again(tmp_path, monkeypatch):
    import shutil

    model = _model()
    for step in (1, 2):
        _save(tmp_path / f"step_{step}", model, step)
    real, seen = ck.load_checkpoint, []

    def meanwhile_the_run_goes_on(path, with_state=True):
        seen.append(Path(path).name)
        if len(seen) == 1:  # the run writes step 3 and prunes step 2 before it is read
            _save(tmp_path / "step_3", model, 3)
            shutil.rmtree(tmp_path / "step_2")
        return real(path, with_state)

    monkeypatch.setattr(ck, "load_checkpoint", meanwhile_the_run_goes_on)
    skipped = []
    loaded = ck.load_newest(tmp_path, skipped)
    assert seen == ["step_2", "step_3"] and loaded.path == tmp_path / "step_3" and skipped == []
    (tmp_path / "step_4").mkdir()  # written and step_3 pruned while the model is being built:
    shutil.copytree(tmp_path / "step_3", tmp_path / "step_4", dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "step_3")
    fresh = _model()
    ck.load_model_weights(fresh, loaded)  # from memory, not from the folder
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    shutil.rmtree(tmp_path / "step_4")
    _save(tmp_path / "step_3", model, 3)
    (tmp_path / "step_3" / "model.safetensors").write_bytes(b"\x00torn")  # the newest is broken:
    loaded = ck.load_newest(tmp_path, skipped)  # skipped and said, as before
    assert loaded.path == tmp_path / "step_1" and [p.name for p, _ in skipped] == ["step_3"]
    with pytest.raises(UsageError, match="corrupt checkpoint file"):  # a folder named itself
        ck.load_newest(tmp_path / "step_3")


def test_pruning_keeps_the_temporary_folder_of_a_live_writer(tmp_path):
    import os
    import subprocess
    import sys

    _save(tmp_path / "step_1", _model(), 1)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    live = tmp_path / f".step_2.tmp-{os.getppid()}-0123abcd"  # pytest's parent: alive
    dead = tmp_path / f".step_3.tmp-{int(ended.stdout)}-4567abcd"
    live.mkdir()
    dead.mkdir()
    ck.prune_checkpoints(tmp_path, keep=1)
    assert live.exists() and not dead.exists()
