"""Fixtures shared by the test modules."""

from __future__ import annotations

import signal

import pytest

import vlmlens as vl


@pytest.fixture(scope="session")
def toy() -> vl.VLM:
    """The shipped toy VLM on the CPU, loaded once per test session."""
    return vl.load("toy", device="cpu")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPU workers bound to 127.0.0.1, per test module (skipped without Ray)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vlmlens[distributed]')")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=200 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def time_limit():
    """Fail (and so shut the cluster down) a test that runs past 10 minutes."""
    def expire(*_):
        raise TimeoutError("the Ray test ran past 10 minutes")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(600)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
