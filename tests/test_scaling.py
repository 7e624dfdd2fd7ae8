"""``benchmarks/scaling.py``: the ring all-reduce and overlap model docs/scaling.md states."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from hypothesis import given, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from scaling import (BUCKET, GPUS_PER_NODE, NETWORK, NVLINK, comm_time, efficiency,  # noqa: E402
                     ring_time, step_for)

sizes = st.floats(1e5, 2e9)


@given(size=sizes, ranks=st.integers(2, 1024))
def test_a_ring_moves_2_p_minus_1_over_p_of_the_bytes_through_each_link(size, ranks):
    bandwidth, latency = NETWORK
    assert ring_time(size, 1, NETWORK) == 0.0
    assert math.isclose(ring_time(size, ranks, NETWORK),
                        2 * (ranks - 1) / ranks * size / bandwidth + 2 * (ranks - 1) * latency)
    # the bandwidth term tends to 2 S / B: more ranks never move more than twice the gradients
    assert ring_time(size, ranks, NETWORK) - 2 * (ranks - 1) * latency < 2 * size / bandwidth


@given(size=sizes, nodes=st.integers(2, 16))
def test_more_nodes_cost_the_nvlink_ring_plus_a_network_ring(size, nodes):
    inside = ring_time(size, GPUS_PER_NODE, NVLINK)
    assert comm_time(size, 1) == inside
    assert math.isclose(comm_time(size, nodes), inside + ring_time(size, nodes, NETWORK))
    assert comm_time(size, nodes) > comm_time(size, nodes - 1)


@given(size=sizes, nodes=st.integers(1, 16), fraction=st.floats(0.05, 0.99))
def test_the_step_time_for_an_efficiency_gives_that_efficiency(size, nodes, fraction):
    comm = comm_time(size, nodes)
    step = step_for(fraction, comm, size)
    assert math.isclose(efficiency(step, comm, size), fraction, rel_tol=1e-9)
    assert efficiency(step * 1.5, comm, size) > fraction > efficiency(step / 1.5, comm, size)


@given(size=sizes, step=st.floats(1e-4, 10.0), comm=st.floats(1e-5, 1.0))
def test_overlap_hides_at_most_the_backward_pass_and_never_the_last_bucket(size, step, comm):
    exposed = step / efficiency(step, comm, size) - step
    slack = 1e-9 * step  # rounding of step / efficiency
    assert exposed >= comm - 2 / 3 * step - slack
    assert exposed >= comm * min(1.0, BUCKET / size) - slack
    assert exposed <= comm + slack

