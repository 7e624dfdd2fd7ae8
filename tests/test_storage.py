"""Remote storage without Ray: locations, the run lease, checkpoints and run files in an
S3-compatible store on loopback (moto), and the commands that read and write URIs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import save_file

from mtl_dsl.errors import UsageError
from mtl_dsl.runtime.checkpoints import (checkpoint_problem, load_checkpoint, newest_usable,
                                         read_shapes, resolve_checkpoint, save_checkpoint)
from mtl_dsl.runtime.config import load_config
from mtl_dsl.runtime.lease import Lease, S3LeaseStore, VerifiedLeaseStore, lock_for
from mtl_dsl.runtime.remote_checkpoints import read_shapes as read_remote_shapes
from mtl_dsl.runtime.run_log import RunLog
from mtl_dsl.runtime.runlock import FileLock
from mtl_dsl.runtime.storage import Location, open_location

TINY_BASELINE = {"backbone": "resnet18", "levels": [1, 2], "dim": 16}


@pytest.fixture
def s3(s3_endpoint) -> Location:
    """A fresh prefix in the loopback store, for one test."""
    return open_location(f"s3://runs/{uuid.uuid4().hex[:12]}", s3_endpoint)


# --- locations ---------------------------------------------------------------------------------------

def test_local_paths_and_file_uris_are_local_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for text in ("runs", str(tmp_path / "runs"), f"file://{tmp_path}/runs"):
        location = open_location(text)
        assert location.local and location.local_path == tmp_path / "runs"
    assert lock_for(open_location("runs").child("a")).__class__ is FileLock


def test_an_s3_location_reads_and_writes_through_the_endpoint(s3):
    assert not s3.local and s3.scheme == "s3" and s3.uri.startswith("s3://runs/")
    run = s3.child("run")
    run.child("x", "a.txt").write_bytes(b"hello")
    assert run.child("x", "a.txt").read_bytes() == b"hello"
    assert run.child("x", "a.txt").read_range(1, 3) == b"ell"
    assert [c.name for c in run.children()] == ["x"] and run.child("x").is_dir()
    assert str(run.child("x")) == f"{s3.uri}/run/x" and run.child("x").parent().uri == run.uri
    run.child("x").delete()
    assert not run.child("x").exists()


@pytest.mark.parametrize("uri, secret", [
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@runs/exp", "carries credentials; give them through the environment"),
    ("s3://runs/exp?access_key=AKIAEXAMPLE&secret_key=abc", "(access_key, secret_key)"),
])
def test_credentials_in_a_storage_uri_are_refused_and_never_echoed(uri, secret):
    with pytest.raises(UsageError) as info:
        load_config(overrides={"run": {"storage": uri}})
    assert secret in info.value.message and "wJalrXUtnFEMI" not in str(info.value)
    assert "abc" not in info.value.message.replace("abc://", "")


def test_an_endpoint_applies_to_s3_storage_only():
    with pytest.raises(UsageError, match=r"an endpoint applies to s3:// storage"):
        load_config(overrides={"run": {"storage": "runs", "storage_endpoint": "http://127.0.0.1:9"}})
    with pytest.raises(UsageError, match=r"not an http\(s\) URL"):
        open_location("s3://runs/x", "ftp://127.0.0.1:9")


def test_an_unknown_scheme_is_one_error_naming_it():
    with pytest.raises(UsageError, match=r"unknown storage scheme 'nosuchfs://'"):
        open_location("nosuchfs://bucket/x")


def test_a_scheme_only_fsspec_knows_is_a_pyarrow_filesystem():
    location = open_location(f"memory://mtl-dsl-test/{uuid.uuid4().hex}")
    location.child("f.bin").write_bytes(b"\x00\x01")
    assert location.scheme == "memory" and location.child("f.bin").read_bytes() == b"\x00\x01"


# --- the lease of a remote run folder ----------------------------------------------------------------

def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _lease_record(location: Location) -> dict:
    return json.loads(location.child(".lock").read_bytes())


def test_a_second_run_on_the_same_uri_is_refused_naming_the_holder(s3):
    run = s3.child("run")
    first = lock_for(run)
    assert isinstance(first, Lease) and isinstance(first.store, S3LeaseStore)
    with first:
        record = _lease_record(run)
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(UsageError) as info:
            Lease(run).acquire()
        assert info.value.message == (f"run folder {run} is in use by another run (PID {os.getpid()} on "
                                      f"{socket.gethostname()}, since {record['started']}); wait for "
                                      f"it to end or choose another --run-name")
    assert not run.child(".lock").exists()  # released
    with Lease(run) as again:
        assert again.took_over is None


def test_a_missing_bucket_is_one_error_naming_the_lease(s3_endpoint):
    run = open_location("s3://no-such-bucket/runs/x", s3_endpoint)
    with pytest.raises(UsageError) as info:
        Lease(run).acquire()
    assert info.value.message.startswith(f"cannot use the run lease {run}/.lock: ")
    assert "NoSuchBucket" in info.value.message


def test_the_lease_of_a_dead_process_or_one_not_renewed_is_taken_over(s3):
    run = s3.child("run")
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "then", "token": "x",
            "renewed": time.time(), "ttl": 60}
    run.child(".lock").write_bytes(json.dumps(dead).encode())
    with Lease(run) as lease:
        assert lease.took_over["pid"] == dead["pid"]
        assert _lease_record(run)["token"] == lease.token
    lapsed = dict(dead, pid=1, host="another-node", renewed=time.time() - 61)
    run.child(".lock").write_bytes(json.dumps(lapsed).encode())
    with Lease(run) as lease:
        assert lease.took_over["host"] == "another-node"
    live = dict(lapsed, renewed=time.time())
    run.child(".lock").write_bytes(json.dumps(live).encode())
    with pytest.raises(UsageError, match=r"in use by another run \(PID 1 on another-node"):
        Lease(run).acquire()


def test_renewal_extends_the_lease_and_notices_a_takeover(s3):
    run = s3.child("run")
    lease = Lease(run, ttl=3600)
    lease.acquire()
    try:
        before = _lease_record(run)["renewed"]
        time.sleep(0.01)
        assert lease.renew() and _lease_record(run)["renewed"] > before
        other = {"pid": 4242, "host": "node-b", "started": "now", "token": "theirs",
                 "renewed": time.time(), "ttl": 60}
        run.child(".lock").write_bytes(json.dumps(other).encode())  # it lapsed and was taken over
        assert not lease.renew()
        assert lease.lost == f"another run took over run folder {run} (PID 4242 on node-b, since now)"
    finally:
        lease.release()
    assert _lease_record(run)["token"] == "theirs"  # not ours to delete


def test_the_background_renewal_keeps_a_short_lease_alive(s3):
    run = s3.child("run")
    with Lease(run, ttl=0.8) as lease:
        first = _lease_record(run)["renewed"]
        time.sleep(1.5)  # past the ttl: only the renewal thread keeps it live
        assert _lease_record(run)["renewed"] > first and lease.lost is None
        with pytest.raises(UsageError, match="in use by another run"):
            Lease(run, ttl=0.8).acquire()


def test_a_filesystem_without_conditional_writes_gets_a_verified_lease():
    run = open_location(f"memory://mtl-dsl-test/{uuid.uuid4().hex}/run")
    first = Lease(run, store=VerifiedLeaseStore(run.child(".lock"), settle=0.05))
    assert isinstance(lock_for(run).store, VerifiedLeaseStore)
    with first:
        with pytest.raises(UsageError, match="in use by another run"):
            Lease(run, store=VerifiedLeaseStore(run.child(".lock"), settle=0.05)).acquire()
        assert first.renew()
        run.child(".lock").write_bytes(json.dumps({"pid": 7, "host": "h", "token": "t",
                                                   "renewed": time.time()}).encode())
        assert not first.renew() and "PID 7 on h" in first.lost
    assert run.child(".lock").exists()  # the other run's lease stays


def test_plain_runs_write_locally_only(tmp_path, s3):
    cfg = load_config(overrides={"run": {"storage": s3.uri, "storage_endpoint": s3.endpoint}})
    from mtl_dsl.runtime.launch import run_training

    with pytest.raises(UsageError, match=r"^--plain: error: --plain trains in this process"):
        run_training("baseline_mt", cfg, plain=True, check_data=False)


def test_a_run_on_a_held_uri_is_refused_before_any_worker_starts(s3):
    from mtl_dsl.runtime.launch import run_training

    cfg = load_config(overrides={"run": {"storage": s3.uri, "storage_endpoint": s3.endpoint,
                                         "name": "held"}})
    with Lease(s3.child("held")):
        records = []
        with pytest.raises(UsageError, match="is in use by another run"):
            run_training("baseline_mt", cfg, progress=records.append, check_data=False)
    assert not any(r.get("kind") == "start" for r in records)


# --- checkpoints in storage --------------------------------------------------------------------------

tensor_dicts = st.dictionaries(
    st.text("abcdefgh.", min_size=1, max_size=6),
    st.tuples(st.sampled_from([torch.float32, torch.float16, torch.int64, torch.uint8]),
              st.lists(st.integers(0, 3), min_size=0, max_size=3)),
    min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(tensors=tensor_dicts, cut=st.integers(1, 64))
def test_the_remote_header_check_agrees_with_safetensors(tmp_path_factory, tensors, cut):
    """Shapes read from the header through a filesystem equal safetensors' own; a file cut short
    anywhere is refused by both."""
    folder = tmp_path_factory.mktemp("st")
    file = folder / "t.safetensors"
    save_file({k: torch.zeros(shape, dtype=dtype) for k, (dtype, shape) in tensors.items()}, str(file))
    location = open_location(str(file))
    assert read_remote_shapes(location) == read_shapes(file)
    data = file.read_bytes()
    file.write_bytes(data[:max(0, len(data) - cut)])
    refused = []
    for reader, target in ((read_remote_shapes, location), (read_shapes, file)):
        try:
            reader(target)
        except UsageError as exc:
            refused.append(exc.message.startswith(("corrupt checkpoint file", "checkpoint file missing")))
    assert refused == [True, True]


def _save(folder: Path, step: int) -> Path:
    return save_checkpoint(folder / f"step_{step:08d}", {"w": torch.full((3, 2), float(step))},
                           {"main.state.0.momentum_buffer": torch.ones(3, 2)}, {"step": step})


def test_the_newest_usable_checkpoint_in_storage_is_found_without_downloading(tmp_path, s3):
    run = s3.child("run")
    for step in (2, 4, 6):
        run.child(f"step_{step:08d}").upload(_save(tmp_path, step))
    model = run.child("step_00000006", "model.safetensors")
    model.write_bytes(model.read_bytes()[:-10])  # an upload cut short
    found, skipped = newest_usable(run)
    assert found.uri == f"{run}/step_00000004"
    assert [p.name for p, _ in skipped] == ["step_00000006"]
    assert skipped[0][1].startswith(f"corrupt checkpoint file {model}: ") and "truncated?" in skipped[0][1]
    loaded = load_checkpoint(run)
    assert loaded.step == 4 and torch.equal(loaded.model_state["w"], torch.full((3, 2), 4.0))
    assert loaded.path.uri == found.uri and checkpoint_problem(run.child("step_00000004")) is None
    with pytest.raises(UsageError) as info:
        resolve_checkpoint(s3.child("nothing"))
    assert info.value.message == f"checkpoint not found: {s3}/nothing"


def test_metrics_and_tensorboard_reach_remote_storage_and_a_resume_extends_them(s3):
    run = s3.child("run")
    log = {"kind": "log", "step": 2, "total": 4, "losses": {"semseg": 1.5}, "loss": 1.5, "lr": 0.1,
           "images_per_s": 3.0}
    with RunLog(run) as first:
        first({"kind": "start", "step": 0})
        first(log)
        first({"kind": "checkpoint", "step": 2, "path": "x"})
        assert run.child("metrics.jsonl").is_file()  # copied at the checkpoint, not only at the end
    with RunLog(run) as second:
        second({"kind": "start", "step": 2})
        second(dict(log, step=4))
        second({"kind": "eval", "step": 4, "metrics": {"semseg/mIoU": 0.5}, "seconds": 1.0})
    lines = [json.loads(x) for x in run.child("metrics.jsonl").read_bytes().decode().splitlines()]
    assert [(x["kind"], x["step"]) for x in lines] == [("log", 2), ("log", 4), ("eval", 4)]
    events = [c.name for c in run.child("tensorboard").children()]
    assert len(events) == 2 and all(e.startswith("events.out.tfevents.") for e in events)


def test_eval_predict_and_init_read_a_checkpoint_uri_and_predict_writes_to_one(
        tmp_path, s3, capsys, monkeypatch):
    """A run trained here (plain, local), its folder copied into storage: the commands read the
    URI, ``predict --out`` writes PNGs into storage, and a fresh run starts from its weights
    (``--init URI``)."""
    from PIL import Image

    from mtl_dsl.cli import main
    from mtl_dsl.runtime.launch import run_training

    cfg = load_config(overrides={
        "model": {"overrides": TINY_BASELINE}, "tasks": "semseg,depth",
        "dataset": {"length": 4, "val_length": 2},
        "training": {"iterations": 2, "batch_size": 2, "input_size": [32, 32], "augment": False,
                     "eval_interval": 0, "checkpoint_interval": 0},
        "run": {"storage": str(tmp_path / "runs"), "name": "local"}})
    result = run_training("baseline_mt", cfg, plain=True, progress=lambda r: None)
    s3.child("copied").upload(result.run_dir)
    argv = ["--checkpoint", f"{s3.uri}/copied", "--storage-endpoint", s3.endpoint]
    capsys.readouterr()
    assert main(["eval", "baseline_mt", *argv]) == 0
    out = capsys.readouterr().out
    assert f"evaluated the checkpoint of step 2 ({s3.uri}/copied/step_00000002)" in out
    assert "semseg/mIoU" in out
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "img.png")
    assert main(["predict", "baseline_mt", *argv, str(tmp_path / "img.png"),
                 "--out", f"{s3.uri}/predictions"]) == 0
    assert sorted(c.name for c in s3.child("predictions").children()) == ["img_depth.png", "img_semseg.png"]
    assert main(["eval", "baseline_mt", "--checkpoint", f"{s3.uri}/nothing-here",
                 "--storage-endpoint", s3.endpoint]) == 2
    assert f"checkpoint not found: {s3.uri}/nothing-here" in capsys.readouterr().err

    # --init with a checkpoint folder in storage; the store's endpoint from the environment, as
    # for any AWS client (run.storage_endpoint belongs to an s3:// run.storage).
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    records = []
    again = run_training("baseline_mt", load_config(overrides=dict(
        cfg.dump(), run={"storage": str(tmp_path / "runs"), "name": "init"},
        training=dict(cfg.dump()["training"], iterations=1))),
        plain=True, progress=records.append, init={"file": f"{s3.uri}/copied"})
    notes = [r["text"] for r in records if r.get("kind") == "note"]
    first = f"{s3.uri}/copied/step_00000002"
    assert f"initialising from the checkpoint {first}" in notes
    count = len(load_checkpoint(result.checkpoint, with_state=False).model_state)
    assert f"initialised {count} tensors from {first}/model.safetensors" in notes
    assert again.step == 1 and not (again.run_dir / "init").exists()  # read from storage


# --- convert -o and --init with official files in storage ----------------------------------------------

CONVERT_ARGS = ["--tasks", "nyud", "--input", "96x128"]


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    from test_golden import official_file

    return official_file("baseline_mt", tmp_path_factory.mktemp("official"))


def test_convert_writes_to_a_uri_and_init_reads_official_files_and_folders_there(official, s3, capsys):
    """``convert -o URI`` and ``--init`` with the folder it wrote, or with the official file in
    storage, give the same tensors (the convert path and the init path map the file apart)."""
    import pickle

    from safetensors.torch import load

    from mtl_dsl.api import compile_model
    from mtl_dsl.cli import main
    from mtl_dsl.weights.convert import load_init, prepare_init

    target = s3.child("converted")
    argv = ["convert", "baseline_mt", str(official), *CONVERT_ARGS, "-o", target.uri,
            "--storage-endpoint", s3.endpoint]
    assert main(argv) == 0
    assert [c.name for c in target.children()] == ["meta.json", "model.safetensors",
                                                   "optimizer.safetensors"]
    converted = load(target.child("model.safetensors").read_bytes())
    capsys.readouterr()
    assert main(argv) == 2
    assert f"output folder exists: {target.uri}" in capsys.readouterr().err

    cfg = load_config(overrides={"tasks": "nyud", "training": {"input_size": [96, 128]},
                                 "run": {"storage": s3.uri, "storage_endpoint": s3.endpoint}})
    model = compile_model("baseline_mt", tasks="nyud", input_size=(96, 128))
    assert model.state_dict().keys() == converted.keys()

    def loaded(file) -> bool:
        """``file`` (as Ray hands it to a worker: pickled) loads every tensor of the converted
        folder into the model."""
        model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
        assert load_init(model, pickle.loads(pickle.dumps(file))) == len(converted)
        state = model.state_dict()
        return all(torch.equal(state[k], converted[k]) for k in converted)

    # a checkpoint folder in storage: the workers read its model file from there
    init = prepare_init("baseline_mt", cfg, target.uri)
    assert init.report == f"initialising from the checkpoint {target.uri}"
    file = init.write(s3.child("run", "init", "model.safetensors"))
    assert str(file) == f"{target.uri}/model.safetensors" and loaded(file)
    # an official file in storage: mapped on the driver, written into the run folder in storage
    s3.child("official.safetensors").write_bytes(official.read_bytes())
    init = prepare_init("baseline_mt", cfg, f"{s3.uri}/official.safetensors")
    assert f"{s3.uri}/official.safetensors" in init.source
    file = init.write(s3.child("run", "init", "model.safetensors"))
    assert file.uri == f"{s3.uri}/run/init/model.safetensors" and loaded(file)


def test_a_sweep_refuses_remote_storage_before_anything_starts():
    from mtl_dsl.runtime.sweep import experiment_dir

    cfg = load_config(overrides={"run": {"storage": "s3://runs/sweeps"}})
    with pytest.raises(UsageError) as info:
        experiment_dir("baseline_mt", cfg)
    assert info.value.message == "mtl-dsl tune keeps its experiment in a local or NFS folder, not in s3://runs/sweeps"
    assert "give a local --storage" in info.value.render()
