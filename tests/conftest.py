"""Fixtures shared by the test modules."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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


@pytest.fixture
def kill_once_written() -> Callable[..., str]:
    """Start ``command`` (a subprocess), kill it as soon as ``path`` exists (or after 300 s, or when it ends by
    itself) and return its stderr: how the resume tests interrupt a job at a known point."""
    def run(command: Sequence[str], path: Path, env: dict[str, str] | None = None) -> str:
        job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while not path.exists() and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            job.kill()
        finally:
            _, err = job.communicate(timeout=60)
        return err.decode()
    return run
