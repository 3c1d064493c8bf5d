"""The GPU code paths, checked on a CPU with fake CUDA tensors.

PyTorch's fake tensors carry a device, a shape and a dtype but no values, and run every operator's shape and
dtype rules: on a machine without a GPU they can stand on the ``cuda`` device and run under CUDA autocast.
So these tests run what a GPU runs (device preprocessing, CUDA autocast's per-operator precisions, memory
written in the compute dtype, object groups and mirrored views as one batch, a training step's forward)
and fail where a GPU would fail for a reason other than values: a tensor made on the host and used beside
device tensors, or two dtypes that CUDA autocast produces meeting in one operator (the short-term
attention's scatter crashed GPU training that way, and no CPU run showed it, since CPU autocast keeps
softmax in the compute dtype). What needs values (boxes read back, losses checked) is left to the tests
marked ``cuda``.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from trek_tracker.device import forget_constant_tensors
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.memory import MemoryConfig
from trek_tracker.inference.preprocess import Frame, autocast_dtype
from trek_tracker.modeling.registry import build_model

CUDA = torch.device("cuda", 0)


@contextlib.contextmanager
def fake_cuda():
    """Fake tensors, with CUDA autocast allowed (it is refused when no GPU is there); afterwards every kept
    constant (built on the fake device) is dropped, so that nothing fake outlives the test."""
    try:
        with (FakeTensorMode() as mode, mock.patch("torch.cuda.is_available", return_value=True),
              mock.patch("torch.cuda.is_bf16_supported", return_value=True)):
            yield mode
    finally:
        forget_constant_tensors()


@pytest.fixture(autouse=True, scope="module")
def _fake_cuda_works():
    """Some PyTorch releases (2.11) start a real CUDA context for the first fake CUDA tensor, which needs a
    driver: there these tests cannot run without a GPU, and the tests marked ``cuda`` take their place."""
    try:
        with fake_cuda() as mode:
            mode.from_tensor(torch.zeros(1)).to(CUDA)
    except RuntimeError as err:
        if torch.cuda.is_available():
            raise
        pytest.skip(f"this PyTorch ({torch.__version__}) cannot fake CUDA tensors without a GPU driver "
                    f"({str(err).splitlines()[0][:80]})")


def on_fake_cuda(module: torch.nn.Module, mode: FakeTensorMode) -> torch.nn.Module:
    """``module`` with every parameter and buffer replaced by a fake copy on the GPU (``Module.to`` cannot
    swap real tensors for fake ones)."""
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for name, tensor in store.items():
                if tensor is not None:
                    fake = mode.from_tensor(tensor).to(CUDA)
                    is_param = isinstance(tensor, torch.nn.Parameter)
                    store[name] = torch.nn.Parameter(fake, tensor.requires_grad) if is_param else fake
    return module


def _frame(h: int, w: int) -> Frame:
    """A frame as the uploader hands it over: uint8 on the GPU."""
    return Frame(np.zeros((h, w, 3), np.uint8), lambda image: torch.empty(image.shape, dtype=torch.uint8, device=CUDA))


def test_fake_cuda_tensors_refuse_host_tensors_and_run_cuda_autocast():
    """The premises of this module: a host tensor beside a (fake) device tensor is an error, and CUDA
    autocast's precisions apply (products in half precision, softmax in float32)."""
    with fake_cuda():
        x = torch.ones(4, 4, device=CUDA)
        with pytest.raises(RuntimeError, match="same device"):
            _ = x + torch.ones(4, 4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            product = x @ x
            assert product.dtype == torch.bfloat16 and torch.softmax(product, -1).dtype == torch.float32


@pytest.mark.parametrize("model_name", ["test_deaot_tiny", "test_msdeaot_tiny", "test_vmos_tiny"])
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_an_engine_tracks_on_the_gpu(model_name: str, precision: str):
    """Reference, then frames past the memory's cap, with object ids 1 and 12 (two object groups) and the
    plain and mirrored views as one batch: outputs on the GPU, logits and memory in the compute dtype, probabilities
    in float32, the long-term memory held at its cap."""
    model = build_model(model_name).eval()
    dtype = autocast_dtype(precision)
    h, w = 60, 80
    labels = np.zeros((h, w), np.int64)
    labels[10:30, 10:40], labels[40:50, 50:70] = 1, 12
    with fake_cuda() as mode:
        model = on_fake_cuda(model, mode)
        if precision != "fp32":
            model.store_for_autocast(dtype)
        engine = VOSEngine(model, EngineConfig(max_long_edge=96, precision=precision, flips=(False, True),
                                               memory=MemoryConfig(cap=2, gap=1)))
        engine.add_reference(_frame(h, w), labels)
        for _ in range(4):
            outputs = engine.predict_views(_frame(h, w))
            engine.commit_views([out.labels for out in outputs])
        assert len(outputs) == 2 and len(engine.group_sizes) == 2
        for out in outputs:
            assert out.labels.device == CUDA and out.labels.shape == (h, w)
            assert out.probs.dtype == torch.float32 and out.probs.shape == (13, h, w)
            assert all(lg.device == CUDA and lg.dtype == dtype for lg in out.logits)
        assert len(engine.memory.frames) == 2  # the reference and the newest frame
        stored = engine.memory.long_term(0, engine.memory.frames[0])
        assert all(t.device == CUDA and t.dtype == dtype for t in stored)


@pytest.mark.parametrize("mode_name", ["mean", "vote"])
def test_an_ensemble_with_test_time_augmentation_tracks_on_the_gpu(mode_name: str):
    """Two members, one of them with two scales and mirrored views, combined by averaging or voting in bf16:
    the combined labels and scores stay on the GPU."""
    from trek_tracker.inference.ensemble import EnsembleEngine
    from trek_tracker.inference.tta import TTAConfig, tta_engine

    models = [build_model("test_deaot_tiny").eval(), build_model("test_msdeaot_tiny").eval()]
    h, w = 60, 80
    labels = np.zeros((h, w), np.int64)
    labels[10:30, 10:40], labels[40:50, 50:70] = 1, 2
    with fake_cuda() as mode:
        for model in models:
            on_fake_cuda(model, mode).store_for_autocast(torch.bfloat16)
        base = EngineConfig(max_long_edge=96, precision="bf16")
        members = [tta_engine(models[0], base, TTAConfig(scales=[1.0, 1.3], flip=True)), VOSEngine(models[1], base)]
        ensemble = EnsembleEngine(members, mode=mode_name, weights=[2.0, 1.0])
        ensemble.add_reference(_frame(h, w), labels)
        for _ in range(3):
            out = ensemble.step(_frame(h, w))
        assert out.labels.device == CUDA and out.labels.shape == (h, w)
        assert out.probs.device == CUDA and out.probs.dtype == torch.float32 and out.probs.shape == (3, h, w)


class _OperatorCount(TorchDispatchMode):
    """How many operators reach the (fake) device: on a GPU, about one kernel launch each, which is what a
    frame costs the host in eager mode."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _operators_per_frame(model_name: str, flips: tuple[bool, ...], objects: int) -> int:
    """Operators of one steady-state bf16 frame (predict and commit; the memory full) on the GPU."""
    model = build_model(model_name).eval()
    h, w = 60, 80
    labels = np.zeros((h, w), np.int64)
    for k in range(objects):
        labels[4 * k:4 * k + 3, 10:40] = k + 1
    with fake_cuda() as mode:
        on_fake_cuda(model, mode).store_for_autocast(torch.bfloat16)
        engine = VOSEngine(model, EngineConfig(max_long_edge=96, precision="bf16", flips=flips,
                                               memory=MemoryConfig(cap=2, gap=1)))
        engine.add_reference(_frame(h, w), labels)
        for _ in range(4):
            engine.commit_views([out.labels for out in engine.predict_views(_frame(h, w))])
        with _OperatorCount() as count:
            engine.commit_views([out.labels for out in engine.predict_views(_frame(h, w))])
    assert len(engine.group_sizes) == (objects + 9) // 10
    return count.n


@pytest.mark.parametrize("model_name", ["test_deaot_tiny", "test_msdeaot_tiny", "test_vmos_tiny"])
def test_mirrored_views_and_object_groups_share_one_network_pass(model_name: str):
    """A frame's views (plain and mirrored) and object groups (12 objects: two groups of at most 10) run
    through the network as one batch: together they add the mirroring and the groups' merge, a few percent
    of a frame's operators, where a pass per view or group would double them (a GPU at 1080p is bound by
    the host's kernel launches, so this is the frame's cost)."""
    one = _operators_per_frame(model_name, (False,), 1)
    both = _operators_per_frame(model_name, (False, True), 12)
    assert one < both <= 1.15 * one, (one, both)


@pytest.mark.parametrize("model_name", ["test_deaot_tiny", "test_msdeaot_tiny"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_training_step_runs_forward_on_the_gpu_under_autocast(model_name: str, dtype: torch.dtype):
    """The unrolled training step (predicted memory, two clips with one and two objects) under CUDA autocast
    gives a float32 loss on the GPU. Its backward needs a real GPU (autograd's device threads): the test
    marked ``cuda`` in tests/train/test_step.py takes it from there."""
    from trek_tracker.train.step import UnrolledStep

    torch.manual_seed(0)
    step = UnrolledStep(build_model(model_name)).train()
    images = torch.randn(2, 4, 3, 65, 65)
    labels = torch.zeros(2, 4, 65, 65, dtype=torch.int64)
    labels[0, :, 10:40, 10:30], labels[1, :, 20:50, 30:60], labels[1, :, 0:10, 0:10] = 1, 2, 1
    with fake_cuda() as mode:
        step = on_fake_cuda(step, mode)
        batch = [mode.from_tensor(t).to(CUDA) for t in (images, labels, torch.tensor([1, 2]))]
        with torch.autocast("cuda", dtype=dtype):
            out = step(*batch, gt_memory=False, long_term_gap=1)
        assert out.loss.device == CUDA and out.loss.dtype == torch.float32 and out.loss.requires_grad
        assert out.frame_losses.device == CUDA
