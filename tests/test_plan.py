"""`vl.plan`: the estimate against the measured peak of a real CPU model, and on the full-size Qwen2-VL-7B
without weights (plausible numbers, growing with the batch).

The measured peak is the largest total size of live tensor storages that the forward passes create (a dispatch
mode sees every op's outputs and a finalizer sees each storage go), so it excludes the weights and the inputs,
as the plan does.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from PIL import Image
from real_checkpoints import checkpoint_dir
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import vlmlens as vl
from vlmlens import engine

TOLERANCE = 0.3  # the plan is within 30% of the measured peak of live tensors


class LiveTensorBytes(TorchDispatchMode):
    """The peak of the bytes held by storages that ops create while this mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.storages: set[int] = set()

    def _freed(self, key: int, size: int) -> None:
        self.storages.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.storages:
                    self.storages.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out


@pytest.fixture(scope="module")
def toy():
    model = vl.load("toy", device="cpu")
    return model, model.prepare(vl.scenes.generate(16, seed=0))


@pytest.mark.parametrize(("n_interventions", "max_batch", "eager"), [(1, 16, False), (4, 64, False), (2, 32, True)])
def test_the_plan_is_close_to_the_measured_peak_of_a_real_model(toy, n_interventions, max_batch, eager):
    model, batch = toy
    # ScaleAttention computes attention patterns explicitly (an eager attention), an ablation does not
    edit = vl.ScaleAttention(layer=1, alpha=2.0, key_region="object") if eager else \
        vl.Ablate("blocks.1.hook_resid_post", region="object")
    groups = [[edit] for _ in range(n_interventions)]
    tracker = LiveTensorBytes()
    with torch.inference_mode(), tracker:
        engine.run(model, batch, groups, lambda logits, sub, unedited: logits[:, :2], max_batch=max_batch)
    assert tracker.live < tracker.peak / 10, "the tracker must see the passes' tensors freed"
    plan = vl.plan(model, batch, n_interventions, max_batch=max_batch, eager=eager)
    assert plan.rows == min(len(batch) * n_interventions, max_batch)
    assert abs(plan.peak_activations / tracker.peak - 1) < TOLERANCE, (plan.peak_activations, tracker.peak)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return vl.load(checkpoint_dir("Qwen--Qwen2-VL-7B-Instruct", tmp_path_factory.mktemp("qwen")), device="meta")


def test_the_7b_plan_is_plausible_and_grows_with_the_batch(qwen):
    image = Image.new("RGB", (336, 336))
    plans = [vl.plan(qwen, qwen.prepare(([image] * n, ["where is the cup ?"] * n)), n_interventions=16)
             for n in (1, 2, 4, 8)]
    peaks = [p.peak for p in plans]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    largest = plans[-1]
    assert largest.rows == 128 and largest.passes == 2 and largest.vision_tokens == 576  # 24x24 patches
    assert abs(largest.weights / (8.29e9 * 2) - 1) < 0.01  # 8.29B bfloat16 parameters
    # 28 layers x (K, V) x 4 KV heads x 128 x 166 tokens x 128 rows in bfloat16
    assert largest.language["KV cache"] == 28 * 2 * 4 * 128 * largest.seq_len * 128 * 2
    assert 2**30 < largest.peak_activations < 16 * 2**30
    assert largest.fits(80 * 2**30) and not largest.fits(16 * 2**30)
    assert largest.max_rows(80 * 2**30) > 256
    assert "15.44 GiB" in largest.table() and "fits" in largest.table(80 * 2**30)


def test_plan_refuses_an_empty_sweep(toy):
    model, batch = toy
    with pytest.raises(ValueError, match=r"n_interventions \(how many intervention groups\) must be an int >= 1, "
                                         "got 0"):
        vl.plan(model, batch, n_interventions=0)
