"""The one memory: schedule (gap, skip), bounded long-term memory (references never evicted, oldest others
first), storage (copied once, preallocated when capped) and gradients in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.inference.conftest import H, W
from trek_tracker.errors import InputError
from trek_tracker.inference.engine import EngineConfig, VOSEngine
from trek_tracker.inference.memory import Memory, MemoryConfig, MemorySchedule
from trek_tracker.modeling.base import LayerLayout
from trek_tracker.modeling.gpm import FrameEntry
from trek_tracker.modeling.registry import build_model, model_config


def _run(model, video, memory: MemoryConfig, steps: int = 11):
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=memory))
    engine.add_reference(frames[0], mask)
    memory = engine.memory
    ref_keys = [memory.long_term(layer, 0)[0].clone() for layer in range(len(memory.layout))]
    counts = []
    for frame in frames[1:steps + 1]:
        engine.step(frame)
        counts.append(len(memory.frames))
    return engine, ref_keys, counts


def test_uncapped_memory_grows_with_the_gap(model, video):
    engine, _, counts = _run(model, video, MemoryConfig(gap=2, cap="none"))
    assert counts == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]  # reference + every 2nd frame
    assert engine.long_term_tokens() == 6 * 63
    assert engine.memory.frames == [10, 8, 6, 4, 2, 0]


def test_a_refused_frame_leaves_the_memory_schedule_as_it_was(model, video):
    """A frame of the wrong size is refused before it is predicted; the frames after it enter the long-term
    memory on the same schedule as if it had never been offered."""
    frames, mask = video
    outputs = []
    for offer_a_wrong_frame in (False, True):
        engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(gap=2, cap="none")))
        engine.add_reference(frames[0], mask)
        for i, frame in enumerate(frames[1:8], 1):
            if i == 3 and offer_a_wrong_frame:
                with pytest.raises(InputError):
                    engine.step(np.zeros((H + 2, W, 3), np.uint8))
            out = engine.step(frame)
        outputs.append(out.probs)
    assert torch.equal(outputs[0], outputs[1])  # the same frames entered the memory


def test_cap_bounds_tokens_and_keeps_the_reference(model, video):
    engine, ref_keys, counts = _run(model, video, MemoryConfig(gap=1, cap=3))
    assert counts == [2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    assert engine.long_term_tokens() == 3 * 63
    memory = engine.memory
    assert [f in memory.reference_frames for f in memory.frames] == [False, False, True]  # newest first
    for layer, key in enumerate(ref_keys):  # the reference itself, every layer, untouched
        assert torch.equal(memory.long_term(layer, 0)[0], key)
    # Every layer holds the same frames (eviction is per frame, across layers).
    grids = [layer.long_term_grid for layer in memory.layout]
    assert {memory.long_term_tokens(i) // (g[0] * g[1]) for i, g in enumerate(grids)} == {3}
    assert {len(memory.attend()[i].long_key) // (g[0] * g[1]) for i, g in enumerate(grids)} == {3}


def test_newest_frames_are_the_ones_kept(model, video):
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(gap=1, cap=3)))
    engine.add_reference(frames[0], mask)
    for frame in frames[1:7]:
        engine.step(frame)
    assert engine.memory.frames == [6, 5, 0]


def test_re_anchoring_adds_a_reference_that_is_also_kept(model, video):
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(gap=1, cap=3)))
    engine.add_reference(frames[0], mask)
    for frame in frames[1:4]:
        engine.step(frame)
    engine.add_reference(frames[4], mask)
    for frame in frames[5:10]:
        engine.step(frame)
    memory = engine.memory
    refs = [f in memory.reference_frames for f in memory.frames]
    assert refs.count(True) == 2 and len(refs) == 3


def test_capped_memory_is_allocated_once_and_written_in_place(model, video):
    """A capped memory lives in buffers sized for the cap: after it fills, frames replace evicted slots in
    the same storage, and the bytes held stop growing."""
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(gap=1, cap=3)))
    engine.add_reference(frames[0], mask)
    memory = engine.memory
    pointer, size = memory.attend()[0].long_key.data_ptr(), memory.nbytes()
    for frame in frames[1:9]:
        engine.step(frame)
        assert memory.attend()[0].long_key.data_ptr() == pointer
        assert memory.nbytes() == size


def test_stored_keys_do_not_keep_the_projection_alive(video):
    """A layer's key is a view of its Q/V projection; the memory must hold a copy of the key only."""
    torch.manual_seed(0)
    model = build_model("test_deaot_tiny").eval()
    frames, mask = video
    engine = VOSEngine(model, EngineConfig(memory=MemoryConfig(gap=1, cap=2)))
    engine.add_reference(frames[0], mask)
    key = engine.memory.long_term(0, 0)[0]
    assert key.untyped_storage().nbytes() <= 2 * key.numel() * key.element_size()


def _entries(layout, value_dim=6, key_dim=4, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    out, ids = [], []
    for layer in layout:
        n = layer.grid[0] * layer.grid[1]
        out.append(FrameEntry(torch.randn(n, 1, key_dim, generator=g, requires_grad=grad),
                              torch.randn(n, 1, value_dim, generator=g, requires_grad=grad), None))
        ids.append(torch.randn(n, 1, value_dim, generator=g, requires_grad=grad))
    return out, ids


@pytest.mark.parametrize("skip", [1, 2, 4])
def test_short_term_memory_is_the_frame_skip_steps_back(skip):
    """Frame t attends to the short-term entry of frame max(0, t - skip) (official skip semantics)."""
    memory = Memory([LayerLayout((3, 4))], MemorySchedule(gap=9999, skip=skip))
    entries, ids = _entries(memory.layout)
    memory.remember(0, entries, ids, reference=True)
    for t in range(1, 12):
        assert memory.short_term_frame == max(0, t - skip), f"frame {t}"
        entries, ids = _entries(memory.layout, seed=max(0, t - skip))  # the map read is the one stored then
        assert torch.equal(memory.attend()[0].short_key, entries[0].key.view(3, 4, 1, 4).permute(2, 3, 0, 1))
        entries, ids = _entries(memory.layout, seed=t)
        memory.remember(t, entries, ids)


def test_a_reference_restarts_the_short_term_memory():
    """A later reference empties the short-term FIFO (docs/inference.md#short-term-memory): the frames after it
    attend to it until ``skip`` frames exist again, never to a frame before it."""
    memory = Memory([LayerLayout((2, 3))], MemorySchedule(gap=9999, skip=2))
    for t in range(3):
        memory.remember(t, *_entries(memory.layout, seed=t), reference=t == 0)
    assert memory.short_term_frame == 1  # frame 3 would attend to 3 - 2
    memory.remember(3, *_entries(memory.layout, seed=3), reference=True)
    attended = []
    for t in range(4, 7):
        attended.append(memory.short_term_frame)
        memory.remember(t, *_entries(memory.layout, seed=t))
    assert attended == [3, 3, 4]


def test_an_unbounded_memory_doubles_its_buffers_when_full():
    """Without a cap the long-term buffers start with room for 2 frames and double when a frame does not fit
    (3x the old size at the peak of a copy, not the 4x of concatenating a zero copy)."""
    layout = [LayerLayout((2, 3))]
    memory = Memory(layout, MemorySchedule(gap=1))
    per_frame = 6 * 1 * (4 + 12) * 4  # tokens x batch x (key + [value, idv]) channels x float32 bytes
    short = 1 * 1 * (4 + 12) * 6 * 4  # one short-term map of keys and values
    capacity, stored = [], []
    for t in range(9):
        stored.append(_entries(layout, seed=t))
        memory.remember(t, *stored[-1], reference=t == 0)
        capacity.append((memory.nbytes() - short) // per_frame)
    assert capacity == [2, 2, 4, 4, 8, 8, 8, 8, 16]
    assert memory.frames == list(range(8, -1, -1))
    for t, (entries, ids) in enumerate(stored):  # every frame's tokens survived the copies into grown buffers
        key, value = memory.long_term(0, t)
        assert torch.equal(key, entries[0].key) and torch.equal(value, torch.cat([entries[0].value, ids[0]], -1))


def test_long_term_subsampling_follows_the_layout():
    memory = Memory([LayerLayout((5, 7)), LayerLayout((9, 13), long_term_dilation=2)], MemorySchedule(gap=1))
    entries, ids = _entries(memory.layout)
    memory.remember(0, entries, ids, reference=True)
    layers = memory.attend()
    assert layers[0].long_key.shape[0] == 35 and layers[1].long_key.shape[0] == 5 * 7
    expected = entries[1].key.view(9, 13, 1, 4)[::2, ::2].reshape(-1, 1, 4)
    assert torch.equal(layers[1].long_key, expected)
    assert layers[1].short_key.shape[-2:] == (9, 13)  # short-term at full resolution


def test_values_are_the_visual_value_and_the_id_value_side_by_side():
    """A memory value is ``[v, idv]`` along channels (docs/inference.md#memory-schedule): long-term tokens after
    the layer's subsampling, short-term as the full map."""
    memory = Memory([LayerLayout((3, 4)), LayerLayout((6, 8), long_term_dilation=2)], MemorySchedule(gap=1))
    entries, ids = _entries(memory.layout)
    memory.remember(0, entries, ids, reference=True)
    for layer, (entry, idv, (h, w)) in enumerate(zip(entries, ids, [(3, 4), (6, 8)], strict=True)):
        value = torch.cat([entry.value, idv], dim=-1).view(h, w, 1, 12)  # (h, w, B, 6 + 6)
        d = memory.layout[layer].long_term_dilation
        attended = memory.attend()[layer]
        assert torch.equal(attended.long_value, value[::d, ::d].reshape(-1, 1, 12))
        assert torch.equal(attended.short_value, value.permute(2, 3, 0, 1))


def test_long_term_reads_back_each_frame_of_each_layer():
    """``long_term(layer, frame)`` is that frame's own tokens, on layers of unlike grids (3x5, and 4x6 kept as
    2x3), after an eviction reused a slot."""
    layout = [LayerLayout((3, 5)), LayerLayout((4, 6), long_term_dilation=2)]
    memory = Memory(layout, MemorySchedule(gap=1, cap=3))
    stored = {}
    for t in range(5):  # frames 1 and 2 are evicted by 3 and 4
        stored[t] = _entries(layout, seed=t)
        memory.remember(t, *stored[t], reference=t == 0)
    assert memory.frames == [4, 3, 0]
    for t in memory.frames:
        entries, ids = stored[t]
        assert torch.equal(memory.long_term(0, t)[0], entries[0].key)
        assert torch.equal(memory.long_term(0, t)[1], torch.cat([entries[0].value, ids[0]], -1))
        value = torch.cat([entries[1].value, ids[1]], -1).view(4, 6, 1, 12)[::2, ::2].reshape(6, 1, 12)
        assert torch.equal(memory.long_term(1, t)[0], entries[1].key.view(4, 6, 1, 4)[::2, ::2].reshape(6, 1, 4))
        assert torch.equal(memory.long_term(1, t)[1], value)


def test_memory_is_written_in_place_when_autograd_records_nothing():
    """Outside training (nothing requires grad) the capped buffers are written in place even with grad mode
    on, so a bounded memory never reallocates; only tensors that require grad are written out of place."""
    layout = [LayerLayout((2, 3))]
    memory = Memory(layout, MemorySchedule(gap=1, cap=2))
    memory.remember(0, *_entries(layout), reference=True)
    pointer = memory.attend()[0].long_key.data_ptr()
    assert torch.is_grad_enabled()
    for t in range(1, 5):
        memory.remember(t, *_entries(layout, seed=t))
        assert memory.attend()[0].long_key.data_ptr() == pointer


def test_gradients_flow_through_the_memory_in_training():
    """Under autograd the memory is written out of place: the loss reaches every remembered frame."""
    memory = Memory([LayerLayout((2, 3))], MemorySchedule(gap=1, cap=2))
    remembered = []
    for t in range(4):
        entries, ids = _entries(memory.layout, seed=t, grad=True)
        memory.remember(t, entries, ids, reference=t == 0)
        remembered.append(entries[0].key)
    layer = memory.attend()[0]
    (layer.long_key.sum() + layer.short_key.sum()).backward()
    assert remembered[0].grad is not None and remembered[3].grad is not None  # reference, newest
    assert remembered[1].grad is None or remembered[1].grad.abs().sum() == 0  # evicted


def test_settings_resolve_against_the_model():
    deaot = model_config("r50_deaotl")
    assert MemoryConfig().resolve(deaot) == MemorySchedule(gap=5, skip=1, cap=10)  # bounded by default
    assert MemoryConfig(gap=2, skip=3, cap=10).resolve(deaot) == MemorySchedule(gap=2, skip=3, cap=10)
    assert MemoryConfig(cap="none").resolve(deaot).cap is None
    assert MemoryConfig(cap="none").resolve(deaot).to_dict()["cap"] == "none"
    assert MemoryConfig(eviction="least-similar").resolve(deaot).eviction == "least-similar"


def test_cap_and_gap_are_validated():
    with pytest.raises(InputError, match="cap"):
        MemoryConfig(cap=0)
    with pytest.raises(InputError, match="cap"):
        MemoryConfig(cap="forever")
    with pytest.raises(InputError, match="gap"):
        MemoryConfig(gap=0)
    with pytest.raises(InputError, match="skip"):
        MemoryConfig(skip=0)
    with pytest.raises(InputError, match="eviction"):
        MemoryConfig(eviction="random")


def test_least_similar_eviction_drops_the_frame_least_like_the_new_one():
    """DMAOT's rule: a full memory drops the non-reference frame whose mean key is least cosine-similar to
    the arriving frame's; the oldest-first rule would have dropped another one."""
    layout = [LayerLayout((2, 2))]
    memory = Memory(layout, MemorySchedule(gap=1, cap=3, eviction="least-similar"))
    direction = {0: [1, 0, 0, 0], 1: [0.9, 0.1, 0, 0], 2: [-1, 0, 0, 0], 3: [1, 0.05, 0, 0]}

    def entries(t):
        key = torch.tensor(direction[t], dtype=torch.float32).repeat(4, 1, 1)  # every token alike
        return [FrameEntry(key, torch.zeros(4, 1, 2), None)], [torch.zeros(4, 1, 2)]

    for t in range(4):
        memory.remember(t, *entries(t), reference=t == 0)
    assert memory.frames == [3, 1, 0]  # frame 2 points away from frame 3; oldest-first would drop frame 1
    oldest = Memory(layout, MemorySchedule(gap=1, cap=3))
    for t in range(4):
        oldest.remember(t, *entries(t), reference=t == 0)
    assert oldest.frames == [3, 2, 0]


def test_least_similar_eviction_compares_first_layer_keys():
    """The similarity is that of the first layer's mean keys (docs/inference.md#bounded-memory), whatever the
    later layers hold: here the second layer's keys point the other way and would evict another frame."""
    layout = [LayerLayout((2, 2)), LayerLayout((1, 4))]  # grids of one size, unlike shapes
    memory = Memory(layout, MemorySchedule(gap=1, cap=3, eviction="least-similar"))
    first = {0: [1, 0, 0, 0], 1: [0.9, 0.1, 0, 0], 2: [-1, 0, 0, 0], 3: [1, 0.05, 0, 0]}
    for t in range(4):
        key = torch.tensor(first[t], dtype=torch.float32).repeat(4, 1, 1)  # every token alike, but for
        if t == 0:  # the reference's (never evicted): each of its slot's halves points another way
            key[2:] = -key[2:]
        entries = [FrameEntry(key, torch.zeros(4, 1, 2), None), FrameEntry(-key, torch.zeros(4, 1, 2), None)]
        memory.remember(t, entries, [torch.zeros(4, 1, 2)] * 2, reference=t == 0)
    assert memory.frames == [3, 1, 0]  # frame 2's first-layer key points away from frame 3's


def test_remember_refuses_entries_or_id_values_for_another_number_of_layers():
    layout = [LayerLayout((2, 3)), LayerLayout((2, 3))]
    memory = Memory(layout, MemorySchedule(gap=1))
    entries, ids = _entries(layout)
    with pytest.raises(ValueError, match="2 layers"):
        memory.remember(0, entries, ids[:1], reference=True)
    with pytest.raises(ValueError, match="2 layers"):
        memory.remember(0, entries[:1], ids, reference=True)


def test_least_similar_eviction_matches_a_frame_by_frame_choice_with_several_batch_items():
    """Random keys for two batch items (views or object groups): the frame evicted is, each time, the one
    whose mean key (averaged over the batch) is least cosine-similar to the new frame's, computed here
    frame by frame from what was stored."""
    layout = [LayerLayout((2, 3))]
    memory = Memory(layout, MemorySchedule(gap=1, cap=4, eviction="least-similar"))
    g = torch.Generator().manual_seed(0)
    keys = {t: torch.randn(6, 2, 8, generator=g) for t in range(12)}

    def cos(a, b):
        return float(torch.nn.functional.cosine_similarity(a.mean(0), b.mean(0), dim=-1).mean())

    for t in range(12):
        before = set(memory.frames)
        if len(before) == 4:
            expected = min((f for f in before if f != 0), key=lambda f: cos(keys[f], keys[t]))
        memory.remember(t, [FrameEntry(keys[t], torch.zeros(6, 2, 3), None)], [torch.zeros(6, 2, 3)],
                        reference=t == 0)
        if len(before) == 4:
            assert before - set(memory.frames) == {expected} and t in memory.frames
    assert 0 in memory.frames and len(memory.frames) == 4


@pytest.mark.parametrize("shape", [(0, 0), (0, W), (H, 0)])
def test_an_empty_reference_frame_is_refused_as_input(model, shape):
    """A 0-sized frame (and its 0-sized mask) is bad input, not a NumPy reduction error from the mask's max."""
    engine = VOSEngine(model, EngineConfig())
    with pytest.raises(InputError, match="frame must have shape"):
        engine.add_reference(np.zeros((*shape, 3), np.uint8), np.zeros(shape, np.uint8))


def test_a_nan_reference_mask_is_refused_as_input(model, video):
    frames, mask = video
    labels = mask.astype(np.float32)
    labels[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        VOSEngine(model, EngineConfig()).add_reference(frames[0], labels)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rotated_views_track_as_their_copies(model, video, precision):
    """A portrait video rotated with ``np.rot90`` (frames and mask are views with a negative stride, which
    torch cannot wrap) tracks exactly as its contiguous copy."""
    frames, mask = video
    probs = []
    for copy in (False, True):
        view = (lambda a: np.ascontiguousarray(np.rot90(a))) if copy else np.rot90
        engine = VOSEngine(model, EngineConfig(precision=precision))
        engine.add_reference(view(frames[0]), view(mask))
        for frame in frames[1:3]:
            out = engine.step(view(frame))
        probs.append(out.probs)
    assert probs[0].shape[-2:] == (W, H)
    assert torch.equal(probs[0], probs[1])


@pytest.mark.parametrize("eviction", ["oldest", "least-similar"])
def test_a_cap_filled_by_references_takes_no_other_frame(eviction):
    """``cap=1`` keeps the reference alone, and a cap filled by references stays at the cap: an ordinary frame
    never pushes the memory past it (only a new reference does), and the schedule goes on as before."""
    layout = [LayerLayout((2, 3))]
    memory = Memory(layout, MemorySchedule(gap=2, cap=1, eviction=eviction))
    for t in range(9):
        assert memory.remember(t, *_entries(layout, seed=t), reference=t == 0) == (t == 0)
        assert memory.frames == [0] and memory.short_term_frame == t
    assert memory.long_term_tokens() == 6
    memory = Memory(layout, MemorySchedule(gap=2, cap=2, eviction=eviction))
    entered = [memory.remember(t, *_entries(layout, seed=t), reference=t in (0, 5)) for t in range(12)]
    assert entered == [True, False, True, False, True, True, False, False, False, False, False, False]
    assert memory.frames == [5, 0] and memory.reference_frames == [0, 5]
    memory.remember(12, *_entries(layout, seed=12), reference=True)  # a new reference is never refused
    assert memory.frames == [12, 5, 0] and len(memory.attend()[0].long_key) == 3 * 6


def test_memories_loaded_from_one_state_are_independent():
    """A memory is written in place: two memories loaded from one state on its own device (the CPU) must
    not share buffers, nor change the state, or the second would attend to the first one's frames."""
    layout = [LayerLayout((2, 3)), LayerLayout((4, 6), long_term_dilation=2)]
    memory = Memory(layout, MemorySchedule(gap=1, cap=2))
    for t in range(3):
        memory.remember(t, *_entries(layout, seed=t), reference=t == 0)
    state = memory.state()
    saved = {k: [v.clone() for v in state[k]] for k in ("long_keys", "long_values", "short_keys", "short_values")}
    first, second = Memory(layout, MemorySchedule(gap=1, cap=2)), Memory(layout, MemorySchedule(gap=1, cap=2))
    first.load_state(state, torch.device("cpu"))
    second.load_state(state, torch.device("cpu"))
    first.remember(3, *_entries(layout, seed=3))  # evicts frame 1 in place: its slot now holds frame 3
    for key, tensors in saved.items():
        assert all(torch.equal(a, b) for a, b in zip(state[key], tensors, strict=True)), key
    for loaded, expected in zip(second.attend(), memory.attend(), strict=True):
        assert torch.equal(loaded.long_key, expected.long_key) and torch.equal(loaded.short_key, expected.short_key)
        assert torch.equal(loaded.long_value, expected.long_value)


def test_a_memory_loaded_mid_schedule_goes_on_as_the_saved_one():
    """``state``/``load_state`` carry the schedule as well as the buffers: with a gap, a skip and a cap, a memory
    loaded between two due frames keeps the same frames, attends to the same short-term frame and the same tokens
    as the memory it was saved from, frame after frame."""
    layout = [LayerLayout((2, 3)), LayerLayout((4, 6), long_term_dilation=2)]
    schedule = MemorySchedule(gap=3, skip=2, cap=3)
    memory = Memory(layout, schedule)
    for t in range(5):  # frames 0 and 3 in the long-term memory; frame 4 is not due until 6
        memory.remember(t, *_entries(layout, seed=t), reference=t == 0)
    loaded = Memory(layout, schedule)
    loaded.load_state(memory.state(), torch.device("cpu"))
    for t in range(5, 14):
        assert loaded.frames == memory.frames and loaded.short_term_frame == memory.short_term_frame, f"frame {t}"
        for a, b in zip(loaded.attend(), memory.attend(), strict=True):
            assert torch.equal(a.long_key, b.long_key) and torch.equal(a.short_value, b.short_value), f"frame {t}"
        entered = memory.remember(t, *_entries(layout, seed=t))
        assert loaded.remember(t, *_entries(layout, seed=t)) == entered, f"frame {t}"
    assert memory.frames == [12, 9, 0]  # the cap and the gap were both at work


def test_a_saved_state_does_not_change_as_the_memory_goes_on():
    """``state`` returns copies: a state saved for ``--resume`` and written out later still holds the frames of
    the moment it was taken, although the memory writes its buffers in place."""
    layout = [LayerLayout((2, 3))]
    memory = Memory(layout, MemorySchedule(gap=1, cap=2))
    for t in range(2):
        memory.remember(t, *_entries(layout, seed=t), reference=t == 0)
    state = memory.state()
    saved = {k: [v.clone() for v in state[k]] for k in ("long_keys", "long_values", "short_keys", "short_values")}
    memory.remember(2, *_entries(layout, seed=2))  # evicts frame 1: its slot now holds frame 2
    for key, tensors in saved.items():
        assert all(torch.equal(a, b) for a, b in zip(state[key], tensors, strict=True)), key
    assert state["slots"] == [(0, True), (1, False)] and state["last_long_term"] == 1


def test_the_smallest_settings_are_valid_and_unbounded_is_spelled_in_any_case():
    deaot = model_config("r50_deaotl")
    assert MemoryConfig(gap=1, skip=1, cap=1).resolve(deaot) == MemorySchedule(gap=1, skip=1, cap=1,
                                                                               eviction=deaot.eviction)
    for spelling in ("None", "NONE", "none"):
        assert MemoryConfig(cap=spelling).resolve(deaot).cap is None


def test_an_empty_memory_cannot_be_attended_to():
    memory = Memory([LayerLayout((2, 3))], MemorySchedule(gap=1))
    with pytest.raises(RuntimeError, match="remember a reference frame first"):
        memory.attend()
