"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

import vlmlens as vl


@pytest.fixture(scope="session")
def toy() -> vl.VLM:
    """The shipped toy VLM on the CPU, loaded once per test session."""
    return vl.load("toy", device="cpu")
