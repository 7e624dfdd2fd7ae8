"""Helpers shared by the test files (import them: ``from conftest import make_call``), and the
``s3_endpoint`` fixture (an S3-compatible store on loopback)."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from mtl_dsl.blocks import REGISTRY, Call


def make_call(block: str, inputs: dict, params: dict | None = None, *, tasks=(), size=(64, 64),
              node: str = "n", **more_params: Any) -> Call:
    """A call of ``block`` as the checker makes it: the block's defaults filled in, then
    ``params`` and ``more_params``; omitted inputs are None."""
    spec = REGISTRY[block]
    full = {k: v.default for k, v in spec.params().items() if not v.required}
    full.update(params or {})
    full.update(more_params)
    inputs = dict(inputs)
    for name in spec.inputs():
        inputs.setdefault(name, None)
    return Call(node=node, block=block, inputs=inputs, params=full, tasks=tuple(tasks),
                input_size=size)


def n_params(module: torch.nn.Module, prefix: str = "") -> int:
    """Parameters of ``module`` (those whose name starts with ``prefix``)."""
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def assert_batch_independent(model, images: torch.Tensor, start: int, stop: int | None = None) -> None:
    """The outputs for ``images[start:stop]`` run alone equal theirs inside the whole batch."""
    part = slice(start, stop)
    with torch.no_grad():
        full, alone = model(images), model(images[part])
    for task in full:
        assert torch.allclose(full[task]["final"][part], alone[task]["final"], atol=1e-4)


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible store on loopback (moto's threaded server) with a bucket ``runs``, and test
    credentials in the environment, where a user's would be (never in a config or URI)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    patch = pytest.MonkeyPatch()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        patch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        patch.delenv(key, raising=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runs")
    yield endpoint
    server.stop()
    patch.undo()
