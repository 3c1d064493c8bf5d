"""The engine's own rules, beside the memory's: which model it tracks with, and where a later reference
frame goes in the video's frame count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trek_tracker.errors import InputError
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.memory import MemoryConfig
from trek_tracker.inference.preprocess import Frame, resize_labels, to_network_input
from trek_tracker.modeling.registry import build_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("test_deaot_tiny").eval()


def test_a_model_in_training_mode_is_refused():
    """Dropout and drop-path would make two runs on the same frames differ, with nothing said."""
    model = build_model("test_deaot_tiny")
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        VOSEngine(model)
    VOSEngine(model.eval())


def test_a_later_reference_is_a_frame_of_its_own_or_replaces_the_commit_of_the_one_predicted(model, video):
    """Re-anchoring on a frame not predicted counts it as the next frame; re-anchoring on the frame just
    predicted (the official evaluator's new objects) puts the reference in that frame's place, and the
    engine's state can be saved right after either."""
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(gap=1)))
    engine.add_reference(frames[0], mask)
    engine.step(frames[1])
    engine.step(frames[2])
    engine.add_reference(frames[3], mask)  # not predicted: frame 3
    assert engine.frame_step == 3 and engine.memory.frames == [3, 2, 1, 0]
    engine.state()
    engine.predict(frames[4])
    with pytest.raises(RuntimeError, match="between frames"):
        engine.state()  # the prediction is not committed yet
    engine.add_reference(frames[4], mask)  # predicted, then re-anchored: frame 4, stored once
    assert engine.frame_step == 4 and engine.memory.frames == [4, 3, 2, 1, 0]
    assert engine.memory.reference_frames == [0, 3, 4]
    engine.state()  # nothing left pending
    engine.step(frames[5])
    assert engine.memory.frames == [5, 4, 3, 2, 1, 0]


def test_a_mirrored_view_of_a_mirrored_video_is_the_plain_view_mirrored(tiny, video):
    """A flipped view (docs/inference.md#test-time-augmentation) mirrors the frame, tracks, and mirrors the answer
    back, feeding its labels back mirrored: given the mirrored video it computes the plain view's answers,
    mirrored, frame after frame (97 x 129 is aligned already, so no resize blurs the mirror)."""
    frames, mask = video
    plain = VOSEngine(tiny, EngineConfig())
    flipped = VOSEngine(tiny, EngineConfig(flips=(True,)))
    plain.add_reference(frames[0], mask)
    flipped.add_reference(frames[0][:, ::-1], mask[:, ::-1])
    both = VOSEngine(tiny, EngineConfig(flips=(True, False)))  # the mirrored view first
    both.add_reference(frames[0], mask)
    for frame in frames[1:4]:
        a, b = plain.step(frame), flipped.step(frame[:, ::-1])
        assert torch.allclose(b.probs, a.probs.flip(-1), atol=1e-6)
        assert torch.equal(b.labels, a.labels.flip(-1))
        mirrored, same = both.predict_views(frame)
        both.commit_views([mirrored.labels, same.labels])
        assert torch.allclose(same.probs, a.probs, atol=1e-6)


def test_objects_are_split_into_groups_of_ten_renumbered_one_to_ten(tiny, video):
    """12 objects make 2 groups (docs/inference.md#object-groups): group g sees ids 10g+1..10g+10 as 1..10 and
    every other id, the other group's included, as background; each view's labels are resized (and mirrored
    for a mirrored view) before that."""
    frames, _ = video
    labels = np.zeros(frames[0].shape[:2], np.int64)
    for k in range(1, 13):  # object k: a 6x6 square
        labels[6 * k:6 * k + 6, 8 * k:8 * k + 6] = k
    engine = VOSEngine(tiny, EngineConfig(max_long_edge=65, flips=(False, True)))
    engine.add_reference(frames[0], labels)
    assert engine.group_sizes == [10, 2] and engine.input_size != frames[0].shape[:2]
    one_hot = engine._one_hot([torch.as_tensor(labels)] * 2)
    assert one_hot.shape == (4, 11, *engine.input_size)  # item v * 2 + g
    for v, flip in enumerate((False, True)):
        small = resize_labels(torch.as_tensor(labels), engine.input_size, flip=flip)
        for g in range(2):
            ids = [small == 10 * g + k for k in range(1, 11)]
            background = ~torch.stack(ids).any(0)
            expected = torch.stack([background, *ids]).float()
            assert torch.equal(one_hot[v * 2 + g], expected), (v, g)
    outputs = engine.predict_views(frames[1])
    assert [tuple(o.probs.shape) for o in outputs] == [(13, *frames[0].shape[:2])] * 2
    # Each group's logits, its unused ids masked, resized to the frame (un-mirrored for the mirrored view),
    # merged as the official soft aggregation: background the product of the groups', objects each group's,
    # clamped to [1e-5, 1 - 1e-5], back to logits, softmax (docs/inference.md#object-groups).
    for o, flip in zip(outputs, (False, True), strict=True):
        assert [tuple(lg.shape) for lg in o.logits] == [(1, 11, *o.logits[0].shape[-2:])] * 2
        bg, fg = [], []
        for lg, n in zip(o.logits, (10, 2), strict=True):
            lg = lg.clone()
            lg[:, n + 1:] = -1e10
            lg = torch.nn.functional.interpolate(lg, size=frames[0].shape[:2], mode="bilinear",
                                                 align_corners=tiny.align_corners)
            p = torch.softmax(lg.flip(-1) if flip else lg, dim=1)[0]
            bg.append(p[0])
            fg.append(p[1:])
        merged = torch.cat([torch.stack(bg).prod(0)[None], *fg]).clamp(1e-5, 1 - 1e-5)
        expected = torch.softmax(torch.logit(merged), dim=0)
        assert torch.allclose(o.probs, expected[:13], atol=1e-6)
        assert torch.equal(o.labels, o.probs.max(0).indices)
    engine.commit_views([o.labels for o in outputs])


def test_fp32_feeds_the_network_the_official_cpu_preprocessing_bit_for_bit(tiny, video):
    """fp32 is the parity mode (docs/inference.md#precision): a resized frame goes through the official
    OpenCV float32 cubic resize, not the device path's torch kernel, and a mirrored view is that input mirrored."""
    frames, mask = video
    engine = VOSEngine(tiny, EngineConfig(max_long_edge=65, flips=(False, True)))
    engine.add_reference(frames[0], mask)
    exact = to_network_input(frames[1], engine.input_size)
    x = engine._network_input(Frame(frames[1]))
    assert torch.equal(x[0], exact[0]) and torch.equal(x[1], exact[0].flip(-1))


def test_a_later_reference_may_fill_the_groups_but_not_add_one(tiny, video):
    """New objects may fill the existing groups of 10, not create another (docs/inference.md#reference-frames)."""
    frames, _ = video
    labels = np.zeros(frames[0].shape[:2], np.int64)
    for k in range(1, 11):
        labels[6 * k:6 * k + 6, 8 * k:8 * k + 6] = k
    engine = VOSEngine(tiny, EngineConfig())
    engine.add_reference(frames[0], np.minimum(labels, 3))  # 3 objects: one group
    engine.add_reference(frames[1], labels)  # 10 objects: the group filled
    assert engine.group_sizes == [10] and engine.num_objects == 10
    engine.add_reference(frames[2], labels)  # the same objects again
    labels[90:95, 120:125] = 11
    with pytest.raises(InputError, match="may not add object groups"):
        engine.add_reference(frames[3], labels)


def test_the_reference_mask_is_checked_against_the_frame(tiny, video):
    """A mask of another size or an empty one is bad input, said in one line; a float map of whole ids (a
    mask read as float) is a label map like any other."""
    frames, mask = video
    for bad, message in ((mask[:-1], "mask size"), (mask[None], "mask size"), (np.zeros_like(mask), "empty")):
        with pytest.raises(InputError, match=message):
            VOSEngine(tiny, EngineConfig()).add_reference(frames[0], bad)
    engine = VOSEngine(tiny, EngineConfig())
    engine.add_reference(frames[0], mask.astype(np.float32))
    assert engine.num_objects == 1 and engine.group_sizes == [1]
    assert engine.token_grid == (7, 9)  # a 16k + 1 input has a 16x grid of k + 1 (docs/inference.md)
