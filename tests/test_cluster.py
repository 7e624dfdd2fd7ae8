"""A Ray cluster of two nodes on this machine, storage in an S3-compatible store on loopback.

The head (127.0.0.2, ``node-a``, with the job server) and a second node (127.0.0.3, ``node-b``)
are started with ``ray start``, each with its own temp dir, one CPU and its own ``HOME``: a
2-worker run is placed on both, and ``~/...`` names a different folder on each node, as the same
path does on two machines. Checkpoints go to moto's S3 server. Runs start both ways users start
them: ``--address`` (here ``run.address``, this process the driver) and ``ray job submit -- mtl-dsl
train ...``. Kept small (a tiny model, 32x32 images, a few steps): starting Ray dominates.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from mtl_dsl.errors import UsageError
from mtl_dsl.runtime.callbacks import PauseAfterStep
from mtl_dsl.runtime.checkpoints import load_checkpoint
from mtl_dsl.runtime.config import load_config
from mtl_dsl.runtime.launch import run_training
from mtl_dsl.runtime.storage import open_location

pytestmark = pytest.mark.slow

TINY_BASELINE = {"backbone": "resnet18", "levels": [1, 2], "dim": 16}
RAY = str(Path(sys.executable).with_name("ray"))


class TwoNodes:
    """``ray start --head`` and ``ray start --address`` as process groups this test owns."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="mtlray-"))  # short: Ray's socket paths
        self.homes = {n: self.root / f"home-{n}" for n in "ab"}
        for home in self.homes.values():
            home.mkdir()
        self.address = ""
        self.head = self.second = None
        self.starts = 0
        self.dashboard = f"http://127.0.0.2:{_free_port('127.0.0.2')}"

    def _start(self, node: str, ip: str, *args: str) -> subprocess.Popen:
        self.starts += 1
        log = open(self.root / f"{node}{self.starts}.log", "w")
        env = dict(os.environ, HOME=str(self.homes[node]), RAY_USAGE_STATS_ENABLED="0")
        return subprocess.Popen([RAY, "start", "--block", "--node-ip-address", ip, "--num-cpus", "1",
                                 "--node-name", f"node-{node}", "--disable-usage-stats",
                                 "--dashboard-agent-listen-port", str(_free_port(ip)),
                                 "--temp-dir", str(self.root / f"ray-{node}{self.starts}"), *args],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        port = self.dashboard.rsplit(":", 1)[1]
        self.head = self._start("a", "127.0.0.2", "--head", "--port", "0", "--include-dashboard", "true",
                                "--dashboard-host", "127.0.0.2", "--dashboard-port", port)
        deadline = time.monotonic() + 240
        while not self.address and time.monotonic() < deadline:
            time.sleep(0.5)
            found = re.search(r"ray start --address='([^']+)'", (self.root / "a1.log").read_text())
            self.address = found.group(1) if found else ""
            assert self.head.poll() is None, (self.root / "a1.log").read_text()
        assert self.address, "the head node did not start"
        self.start_second()

    def start_second(self) -> None:
        self.second = self._start("b", "127.0.0.3", "--address", self.address)

    def alive(self) -> list[str]:
        import ray

        return sorted(n["NodeName"] for n in ray.nodes() if n["Alive"])

    def wait_for(self, names: list[str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while self.alive() != names:
            assert time.monotonic() < deadline, f"nodes alive: {self.alive()}, wanted {names}"
            time.sleep(0.5)

    def kill_second(self) -> None:
        os.killpg(self.second.pid, signal.SIGKILL)
        self.second.wait()

    def stop(self) -> None:
        for process in (self.second, self.head):
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    import ray

    from mtl_dsl.runtime.ray_start import start_ray

    nodes = TwoNodes()
    try:
        nodes.start()
        start_ray(_config(nodes, s3_endpoint, "probe"), verbose=False, workers=2)  # joins run.address
        nodes.wait_for(["node-a", "node-b"])
        yield nodes
    finally:
        ray.shutdown()
        nodes.stop()


def _config(nodes: TwoNodes, endpoint: str, name: str, prefix: str = "cluster", **training):
    settings = {"iterations": 6, "batch_size": 2, "input_size": [32, 32], "augment": False,
                "log_interval": 2, "eval_interval": 0, "checkpoint_interval": 2, "eval_batches": 1}
    settings.update(training)
    return load_config(overrides={
        "model": {"overrides": TINY_BASELINE}, "tasks": "semseg,depth",
        "dataset": {"length": 16, "val_length": 4},
        "training": settings,
        "run": {"storage": f"s3://runs/{prefix}", "storage_endpoint": endpoint, "name": name,
                "workers": 2, "max_failures": 4, "address": nodes.address, "timeout_s": 60}})


def _records():
    records: list[dict] = []
    return records, records.append


@pytest.fixture(scope="module")
def reference(cluster, s3_endpoint, tmp_path_factory):
    """An uninterrupted 2-worker run on both nodes, checkpoints in S3; its final weights."""
    workdir = tmp_path_factory.mktemp("driver")
    cwd = os.getcwd()
    os.chdir(workdir)  # where a local ./runs would appear
    try:
        records, sink = _records()
        result = run_training("baseline_mt", _config(cluster, s3_endpoint, "reference"), progress=sink)
    finally:
        os.chdir(cwd)
    weights = load_checkpoint(result.checkpoint, with_state=False).model_state
    return {"result": result, "records": records, "weights": weights, "workdir": workdir}


def test_a_dataset_folder_on_one_node_only_stops_the_run_before_step_1_naming_the_other(
        cluster, s3_endpoint):
    from test_datasets import make_nyud

    make_nyud(cluster.homes["a"] / "nyud")  # ~/nyud/NYUD_MT on node-a only
    cfg = load_config(overrides={
        "model": {"overrides": TINY_BASELINE},
        "dataset": {"name": "nyud", "root": "~/nyud/NYUD_MT"},
        "training": {"iterations": 2, "batch_size": 1, "input_size": [32, 32], "augment": False},
        "run": {"storage": "s3://runs/cluster", "storage_endpoint": s3_endpoint, "name": "data",
                "workers": 2, "address": cluster.address}})
    records, sink = _records()
    with pytest.raises(UsageError) as info:
        run_training("baseline_mt", cfg, progress=sink)
    assert info.value.message == (
        "dataset folder ~/nyud/NYUD_MT is not usable on node node-b (127.0.0.3): missing (it is "
        "there on node-a (127.0.0.2)); every node that runs a worker needs it at that path")
    assert not [r for r in records if r.get("kind") in ("start", "log", "checkpoint")]


def test_a_two_node_run_writes_its_checkpoints_to_s3_only_and_eval_and_resume_read_them(
        cluster, s3_endpoint, reference, capsys):
    result, records = reference["result"], reference["records"]
    run = open_location("s3://runs/cluster/reference", s3_endpoint)
    assert str(result.run_dir) == run.uri and result.step == 6
    assert result.checkpoint.uri == f"{run.uri}/step_00000006"
    starts = [r for r in records if r.get("kind") == "start"]
    assert [(s["world"], s["nodes"]) for s in starts] == [(2, ["node-a (127.0.0.2)", "node-b (127.0.0.3)"])]
    names = {c.name for c in run.children()}
    assert {"step_00000004", "step_00000006", "metrics.jsonl", "tensorboard"} <= names
    assert ".lock" not in names  # the lease is released
    # Nothing a user needs on a local disk: no checkpoint where the driver ran, nor on either node.
    for folder in (reference["workdir"], cluster.root):
        assert not list(Path(folder).rglob("*.safetensors")), folder
    assert not (reference["workdir"] / "runs").exists()

    from mtl_dsl.cli import main

    capsys.readouterr()
    assert main(["eval", "baseline_mt", "--checkpoint", run.uri, "--storage-endpoint", s3_endpoint,
                 "--max-batches", "1"]) == 0
    assert f"evaluated the checkpoint of step 6 ({run.uri}/step_00000006)" in capsys.readouterr().out

    # --resume, submitted as a Ray job: the driver runs on the head node and joins through the
    # RAY_ADDRESS the job server gives it; the run continues from the checkpoint in S3.
    flags = ["--tasks", "semseg,depth", "--set", "backbone=resnet18", "--set", "levels=[1,2]",
             "--set", "dim=16", "--set", "dataset.length=16", "--set", "dataset.val_length=4",
             "--iterations", "8", "--set", "training.batch_size=2", "--input", "32x32",
             "--set", "training.augment=false", "--set", "training.log_interval=2",
             "--set", "training.eval_interval=0", "--set", "training.checkpoint_interval=2",
             "--set", "training.eval_batches=1", "--workers", "2", "--set", "run.max_failures=4",
             "--set", "run.timeout_s=60", "--storage", "s3://runs/cluster",
             "--storage-endpoint", s3_endpoint, "--run-name", "reference", "--resume"]
    job = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard, "--",
                          sys.executable, "-m", "mtl_dsl.cli", "train", "baseline_mt", *flags],
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "resumed from step 6" in job.stdout and "training 8 steps from step 6 on 2 worker(s) on 2 nodes" in job.stdout
    assert f"done: 8 steps; last checkpoint {run.uri}/step_00000008" in job.stdout
    assert load_checkpoint(run).step == 8


def test_losing_a_node_mid_run_continues_from_storage_to_the_weights_of_an_uninterrupted_run(
        cluster, s3_endpoint, reference, tmp_path):
    """The run stands still after step 5 (its step-4 checkpoint in S3); node-b is killed
    (SIGKILL to its raylet and workers), comes back, and Ray Train restarts the workers from the
    last checkpoint in storage."""
    marker = tmp_path / "node-b-killed"
    run = open_location("s3://runs/cluster/lost", s3_endpoint)
    events: list[str] = []

    def take_node_b_down() -> None:
        deadline = time.monotonic() + 300
        while not run.child("step_00000004", "meta.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.5)
        cluster.kill_second()
        events.append("killed")
        marker.write_text("node-b is down\n")
        cluster.wait_for(["node-a"])
        events.append("dead")
        cluster.start_second()
        cluster.wait_for(["node-a", "node-b"])
        events.append("back")

    helper = threading.Thread(target=take_node_b_down, daemon=True)
    helper.start()
    records, sink = _records()
    result = run_training("baseline_mt", _config(cluster, s3_endpoint, "lost"), progress=sink,
                          callbacks=[PauseAfterStep(5, marker)])
    helper.join(60)
    assert events == ["killed", "dead", "back"]
    starts = [r["step"] for r in records if r.get("kind") == "start"]
    assert starts[0] == 0 and starts[-1] in (2, 4) and len(starts) >= 2, starts
    assert f"resumed from step {starts[-1]}" in [r["text"] for r in records if r.get("kind") == "note"]
    assert result.step == 6
    final = load_checkpoint(result.checkpoint, with_state=False).model_state
    expected = reference["weights"]
    assert final.keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(final[k], expected[k])]
    assert not differing, differing[:5]
