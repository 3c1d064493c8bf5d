"""The unrolled step: batch independence, where gradients go, memory schedule, and agreement with the
inference engine's memory construction."""

from __future__ import annotations

import pytest
import torch

from trek_tracker.modeling.registry import build_model
from trek_tracker.train.step import UnrolledStep


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 4, 3, 65, 65, generator=g)
    labels = torch.zeros(2, 4, 65, 65, dtype=torch.int64)
    labels[0, :, 10:40, 10:30] = 1
    labels[1, :, 20:50, 30:60] = 2
    labels[1, :, 0:10, 0:10] = 1
    return images, labels, torch.tensor([1, 2])


@pytest.fixture(params=["test_deaot_tiny", "test_msdeaot_tiny"])
def step(request):
    torch.manual_seed(0)
    return UnrolledStep(build_model(request.param)).eval()


@pytest.mark.parametrize("gt_memory", [True, False])
def test_batch_loss_is_mean_of_sample_losses(step, batch, gt_memory):
    images, labels, n = batch
    kw = dict(hard_fraction=0.3, aux_weight=0.7, gt_memory=gt_memory, long_term_gap=2)
    with torch.no_grad():
        both = step(images, labels, n, **kw)
        one = [step(images[i:i + 1], labels[i:i + 1], n[i:i + 1], **kw) for i in range(2)]
    assert float(both.loss) == pytest.approx(float(sum(o.loss for o in one)) / 2, rel=1e-4)
    assert torch.allclose(both.frame_losses, (one[0].frame_losses + one[1].frame_losses) / 2, rtol=1e-4)


@pytest.mark.parametrize("gt_memory", [True, False])
def test_predicted_memory_is_detached_from_the_id_bank(step, batch, gt_memory):
    """Frames remembered from ground truth embed their labels with gradient. Once the model's own predictions
    feed the memory, every ID embedding is detached, the reference's too (official ``freeze_id``): the ID
    banks and their norms get no gradient, so they do not count in the clipped norm. The decoder trains
    either way."""
    images, labels, n = batch
    step.train()
    fused = []
    original = step.model.fuse_id

    def spy(layer, entry, id_emb):
        banks = [id_emb] if isinstance(id_emb, torch.Tensor) else id_emb.banks  # MSDeAOT: one per ID bank
        fused.append(any(b.requires_grad for b in banks))
        return original(layer, entry, id_emb)

    step.model.fuse_id = spy
    try:
        step.zero_grad()
        step(images, labels, n, gt_memory=gt_memory).loss.backward()
    finally:
        step.model.fuse_id = original
    layers = step.model.config.num_layers
    assert fused == [gt_memory] * (layers * (images.shape[1] - 2))  # frames 1..T-2 enter memory
    id_params = [p for n, p in step.model.named_parameters() if n.startswith(("id_bank", "id_norm"))]
    assert len(id_params) >= 4
    for p in id_params:
        assert (p.grad is not None and p.grad.abs().sum() > 0) if gt_memory else p.grad is None
    head = step.model.decoder.conv_out if hasattr(step.model, "decoder") else step.model.head_out  # MSDeAOT
    assert head.weight.grad.abs().sum() > 0


def _decoded(step, *args, **kw) -> list[torch.Tensor]:
    """Every logits map the step decodes (reference first)."""
    captured = []
    original = step.model.decode
    step.model.decode = lambda tokens, feats: captured.append(original(tokens, feats)) or captured[-1]
    try:
        with torch.no_grad():
            step(*args, **kw)
    finally:
        step.model.decode = original
    return captured


@pytest.mark.parametrize("gap,frames_in_memory", [(9999, [1, 1, 1]), (1, [1, 2, 3]), (2, [1, 1, 2])])
def test_long_term_gap_schedules_memory_frames(step, batch, gap, frames_in_memory):
    seen = []
    original = step.model.propagate

    def spy(feats, memories, id_emb=None):
        if memories is not None:
            tokens = feats[-1].shape[-2] * feats[-1].shape[-1]
            seen.append(memories[0].long_key.shape[0] // tokens)
            assert memories[0].short_key.shape[0] == feats[-1].shape[0]  # batch kept
        return original(feats, memories, id_emb)

    step.model.propagate = spy
    try:
        with torch.no_grad():
            step(*batch, long_term_gap=gap)
    finally:
        step.model.propagate = original
    assert seen == frames_in_memory


def test_unrolled_clip_matches_the_inference_engine(step):
    """With predicted memory the step remembers what the engine remembers: the same logits on every frame
    of a 4-frame clip (long-term gap 2, so frame 2 enters the long-term memory; MSDeAOT also subsamples its
    8x long-term memory), when the clip is at the network's input size."""
    from trek_tracker.inference.engine import EngineConfig, VOSEngine
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.inference.preprocess import to_network_input

    rng = torch.Generator().manual_seed(5)
    frames = (torch.rand(4, 65, 65, 3, generator=rng) * 255).to(torch.uint8).numpy()
    label = torch.zeros(65, 65, dtype=torch.int64)
    label[10:40, 20:50] = 1
    label[45:60, 5:20] = 2
    engine = VOSEngine(step.model, EngineConfig(max_long_edge=None, memory=MemoryConfig(gap=2)))
    engine.add_reference(frames[0], label.numpy())
    engine_logits = [engine.step(f).logits[0] for f in frames[1:]]

    images = torch.cat([to_network_input(f, (65, 65)) for f in frames])[None]
    labels = torch.stack([label] * 4)[None]
    captured = _decoded(step, images, labels, torch.tensor([2]), gt_memory=False, long_term_gap=2)
    assert len(captured) == 4
    for ours, theirs in zip(captured[1:], engine_logits, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_training_step_on_cuda(batch, dtype):
    """The unrolled step under CUDA autocast, with gradient scaling for float16 (it crashed at step 1): the
    losses are finite and the weights move. In float16 the scaler skips a step whose scaled gradients
    overflow and lowers its scale (its first steps often do, from 2^16), as the training loop relies on."""
    torch.manual_seed(0)
    step = UnrolledStep(build_model("test_msdeaot_tiny").cuda()).train()
    images, labels, n = (t.cuda() for t in batch)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    optimizer = torch.optim.AdamW(step.parameters(), lr=1e-4)
    before = [p.detach().clone() for p in step.parameters()]
    for _ in range(20):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            out = step(images, labels, n, gt_memory=False, long_term_gap=1)
        assert torch.isfinite(out.loss) and torch.isfinite(out.frame_losses).all()
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        grads = [p.grad for p in step.parameters() if p.grad is not None]
        assert grads
        if all(torch.isfinite(g).all() for g in grads):
            break
        assert dtype == torch.float16 and scaler.get_scale() < scale  # an overflow: skipped, scale lowered
    assert all(torch.isfinite(g).all() for g in grads)  # a step was taken ...
    assert any(not torch.equal(a, b) for a, b in zip(before, step.parameters(), strict=True))  # ... and moved


def test_an_id_permutation_must_keep_background_first(step, batch):
    images, labels, n = batch
    classes = step.model.config.max_objects + 1
    good = torch.arange(classes).expand(2, classes)
    for bad in (good.flip(1), good[:1], good[:, :-1]):
        with pytest.raises(ValueError, match="id_perm"), torch.no_grad():
            step(images, labels, n, id_perm=bad)


def test_clip_loss_is_the_weighted_aux_loss_plus_the_mean_frame_loss(step, batch):
    """docs/training.md#unrolled-step: ``loss = aux_weight x aux_loss + mean(frame losses)``."""
    with torch.no_grad():
        out = step(*batch, aux_weight=0.3, hard_fraction=0.5)
    assert out.frame_losses.shape == (batch[0].shape[1] - 1,) and float(out.aux_loss) > 0
    expected = 0.3 * float(out.aux_loss) + float(out.frame_losses.mean())
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
