"""The memory of one object group: what enters it, when, in what layout, and what leaves it.

This is the only implementation: the inference engine keeps one :class:`Memory` per object group and the
unrolled training step keeps one per clip batch, so inference and training cannot drift apart.

Schedule (docs/inference.md#memory-schedule):

* a reference frame enters both memories and restarts the short-term memory;
* every later frame enters the short-term memory; the frame each layer attends to is the oldest of the
  last ``skip`` frames (``skip = 1``: the previous frame);
* a frame enters the long-term memory when at least ``gap`` frames have passed since the last one that did;
* with a ``cap``, a full long-term memory drops one non-reference frame (references are never evicted):
  the oldest (``eviction="oldest"``), or the one least like the frame that arrives (``"least-similar"``,
  DMAOT's rule: cosine similarity of the frames' mean keys); without a cap it grows, as the official engine
  does. A cap filled by references takes no other frame (``cap=1`` keeps the reference alone); only a new
  reference grows the memory past its cap.

Layout: per GPM layer, long-term keys ``(M, B, d_att)`` and values ``(M, B, C_v + C_id)`` in one buffer
each, one slot of ``T`` tokens per frame (``T`` after the layer's ``[::d, ::d]`` long-term subsampling);
the short-term frame as maps ``(B, C, H, W)`` in a ring of ``skip`` slots. A frame's tensors are copied into
their slot once, so nothing else (the projection its keys are a view of, an older concatenation) is kept
alive. Slots are filled in order and a new frame replaces the evicted one in place, so the valid slots are
always a prefix (attention does not depend on the order of memory tokens). Under autograd (training) the
same writes are made out of place, so that gradients flow through the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trek_tracker.errors import InputError
from trek_tracker.modeling.base import LayerLayout, ModelConfig
from trek_tracker.modeling.gpm import FrameEntry, LayerMemory
from trek_tracker.modeling.layout import map_to_tokens, tokens_to_map

UNBOUNDED = "none"
EVICTIONS = ("oldest", "least-similar")


@dataclass
class MemoryConfig:
    """Memory settings; ``None`` takes the model's test-time default (``gap``, ``skip``, ``cap``,
    ``eviction``).

    ``cap`` is a number of long-term frames, or ``"none"`` for the official unbounded memory.
    """

    gap: int | None = None
    skip: int | None = None
    cap: int | str | None = None
    eviction: str | None = None

    def __post_init__(self) -> None:
        if self.gap is not None and self.gap < 1:
            raise InputError(f"long-term memory gap must be at least 1, got {self.gap}")
        if self.skip is not None and self.skip < 1:
            raise InputError(f"short-term memory skip must be at least 1, got {self.skip}")
        if isinstance(self.cap, str):
            if self.cap.lower() != UNBOUNDED:
                raise InputError(f"long-term memory cap must be a number of frames or 'none', got {self.cap!r}")
            self.cap = UNBOUNDED
        elif self.cap is not None and self.cap < 1:
            raise InputError(f"long-term memory cap must be at least 1 frame, got {self.cap}")
        if self.eviction is not None and self.eviction not in EVICTIONS:
            raise InputError(f"unknown memory eviction {self.eviction!r}; choose one of: {', '.join(EVICTIONS)}")

    def resolve(self, model: ModelConfig) -> MemorySchedule:
        """The schedule these settings give for ``model``."""
        cap = model.long_term_cap if self.cap is None else (None if self.cap == UNBOUNDED else self.cap)
        return MemorySchedule(gap=self.gap if self.gap is not None else model.long_term_gap,
                              skip=self.skip if self.skip is not None else model.short_term_skip, cap=cap,
                              eviction=self.eviction or model.eviction)


@dataclass(frozen=True)
class MemorySchedule:
    """A resolved schedule: ``cap`` None is unbounded."""

    gap: int
    skip: int = 1
    cap: int | None = None
    eviction: str = "oldest"

    def to_dict(self) -> dict:
        return {"gap": self.gap, "skip": self.skip, "cap": UNBOUNDED if self.cap is None else self.cap,
                "eviction": self.eviction}


@dataclass
class _Slot:
    frame: int
    reference: bool


class Memory:
    """Long-term and short-term memory of one object group, for every GPM layer of a model.

    >>> memory = Memory(model.memory_layout(feats), MemorySchedule(gap=5))
    >>> memory.remember(0, entries, [e.id_value for e in entries], reference=True)
    >>> tokens, entries = model.propagate(feats, memory.attend())
    """

    def __init__(self, layout: Sequence[LayerLayout], schedule: MemorySchedule) -> None:
        self.layout = list(layout)
        self.schedule = schedule
        self._long_keys: list[torch.Tensor | None] = [None] * len(self.layout)
        self._long_values: list[torch.Tensor | None] = [None] * len(self.layout)
        self._slots: list[_Slot] = []  # physical slot i holds frame _slots[i]
        self._short_keys: list[torch.Tensor | None] = [None] * len(self.layout)
        self._short_values: list[torch.Tensor | None] = [None] * len(self.layout)
        self._short_frames: list[int] = []  # frames in the short-term ring, by slot
        self._short_next = 0  # the ring slot the next frame goes to
        self._last_long_term: int | None = None

    # ------------------------------------------------------------------ writing
    def remember(self, frame: int, entries: Sequence[FrameEntry], id_values: Sequence[torch.Tensor], *,
                 reference: bool = False) -> bool:
        """Remember ``frame``: each layer's key and value (visual value and ``id_values``, concatenated).

        Returns whether the frame entered the long-term memory.
        """
        if len(entries) != len(self.layout) or len(id_values) != len(self.layout):
            raise ValueError(f"expected {len(self.layout)} layers, got {len(entries)} entries and "
                             f"{len(id_values)} ID values")
        due = reference or self._last_long_term is None or frame - self._last_long_term >= self.schedule.gap
        slot = self._long_term_slot(frame, reference, entries[0].key) if due else None
        short = self._short_term_slot(frame, reference)
        for i, (entry, idv, layer) in enumerate(zip(entries, id_values, self.layout, strict=True)):
            value = torch.cat([entry.value, idv], dim=-1)
            key_map, value_map = tokens_to_map(entry.key, layer.grid), tokens_to_map(value, layer.grid)
            skip = self.schedule.skip
            self._short_keys[i] = _write(self._short_keys[i], short, key_map[None], skip)
            self._short_values[i] = _write(self._short_values[i], short, value_map[None], skip)
            if slot is not None:
                d = layer.long_term_dilation
                if d > 1:
                    key, value = map_to_tokens(key_map[..., ::d, ::d]), map_to_tokens(value_map[..., ::d, ::d])
                else:
                    key = entry.key
                self._long_keys[i] = self._write_long(self._long_keys[i], slot, key)
                self._long_values[i] = self._write_long(self._long_values[i], slot, value)
        if due:  # the schedule goes on from a due frame even when a memory full of references refused it
            self._last_long_term = frame
        return slot is not None

    def _long_term_slot(self, frame: int, reference: bool, key: torch.Tensor) -> int | None:
        """The slot ``frame`` goes to: the next free one, or the evicted frame's when the memory is full;
        None when the memory is full of references and ``frame`` is not one."""
        cap = self.schedule.cap
        if cap is not None and len(self._slots) >= cap:
            victims = [i for i, s in enumerate(self._slots) if not s.reference]
            if victims:
                if self.schedule.eviction == "least-similar":
                    i = victims[int(self._similarities(key)[victims].argmin())]  # one read-back, not one per slot
                else:  # the oldest non-reference frame
                    i = min(victims, key=lambda j: self._slots[j].frame)
                self._slots[i] = _Slot(frame, reference)
                return i
            if not reference:  # references alone fill the cap: an ordinary frame would only push past it
                return None
            # a new reference where only references are left: none is evicted, so the memory grows past the cap
        self._slots.append(_Slot(frame, reference))
        return len(self._slots) - 1

    def _similarities(self, key: torch.Tensor) -> torch.Tensor:
        """Per long-term slot, the cosine similarity of its frame's mean first-layer key with a new frame's,
        averaged over the batch (full-resolution keys of the new frame; stored keys after the layer's
        subsampling, which keeps the mean's scale). One tensor, so choosing a victim reads back once."""
        t = self.layout[0].long_term_grid[0] * self.layout[0].long_term_grid[1]
        n = len(self._slots)
        stored = self._long_keys[0][: n * t].unflatten(0, (n, t)).float().mean(1)  # (slots, B, C)
        return torch.nn.functional.cosine_similarity(stored, key.float().mean(0)[None], dim=-1).mean(-1).cpu()

    def _short_term_slot(self, frame: int, reference: bool) -> int:
        skip = self.schedule.skip
        if reference:  # a reference restarts the short-term memory
            self._short_frames, self._short_next = [], 0
        slot = self._short_next
        if slot < len(self._short_frames):
            self._short_frames[slot] = frame
        else:
            self._short_frames.append(frame)
        self._short_next = (slot + 1) % skip
        return slot

    def _write_long(self, buffer: torch.Tensor | None, slot: int, tokens: torch.Tensor) -> torch.Tensor:
        """Copy one frame's tokens into ``slot`` of a layer's long-term buffer, growing it when needed."""
        if buffer is not None and (slot + 1) * tokens.shape[0] > buffer.shape[0]:  # unbounded: double it
            grown = buffer.new_empty((2 * buffer.shape[0], *buffer.shape[1:]))  # 3x the old size at the peak,
            grown[: buffer.shape[0]].copy_(buffer)  # not the 4x of concatenating a zero copy
            buffer = grown
        return _write(buffer, slot, tokens, self.schedule.cap or 2)

    # ------------------------------------------------------------------ reading
    def attend(self) -> list[LayerMemory]:
        """What each layer attends to for the next frame: the valid long-term tokens and the short-term
        frame (the oldest in the ring)."""
        if not self._slots:
            raise RuntimeError("the memory is empty: remember a reference frame first")
        n = len(self._slots)
        oldest = self._short_next % len(self._short_frames) if len(self._short_frames) == self.schedule.skip else 0
        out = []
        for i, layer in enumerate(self.layout):
            t = layer.long_term_grid[0] * layer.long_term_grid[1]
            out.append(LayerMemory(self._long_keys[i][: n * t], self._long_values[i][: n * t],
                                   self._short_keys[i][oldest], self._short_values[i][oldest]))
        return out

    @property
    def frames(self) -> list[int]:
        """Frames in the long-term memory, newest first (the official order)."""
        return sorted((s.frame for s in self._slots), reverse=True)

    @property
    def reference_frames(self) -> list[int]:
        return sorted(s.frame for s in self._slots if s.reference)

    @property
    def short_term_frame(self) -> int:
        """The frame the next frame's short-term attention reads."""
        ring = self._short_frames
        return ring[self._short_next % len(ring)] if len(ring) == self.schedule.skip else ring[0]

    def long_term_tokens(self, layer: int = 0) -> int:
        """Valid tokens in a layer's long-term memory."""
        grid = self.layout[layer].long_term_grid
        return len(self._slots) * grid[0] * grid[1]

    def long_term(self, layer: int, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored long-term key and value tokens of ``frame`` in ``layer`` (views)."""
        slot = next(i for i, s in enumerate(self._slots) if s.frame == frame)
        grid = self.layout[layer].long_term_grid
        t = grid[0] * grid[1]
        return (self._long_keys[layer][slot * t:(slot + 1) * t], self._long_values[layer][slot * t:(slot + 1) * t])

    # ------------------------------------------------------------------ saving and restoring
    def state(self) -> dict:
        """Everything the memory holds, as plain values and CPU tensors (copies): what ``trek-track run
        --resume`` saves so that a resumed run computes what an uninterrupted one would."""
        def copy(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
            return [None if t is None else t.detach().to("cpu", copy=True) for t in tensors]

        return {"long_keys": copy(self._long_keys), "long_values": copy(self._long_values),
                "short_keys": copy(self._short_keys), "short_values": copy(self._short_values),
                "slots": [(s.frame, s.reference) for s in self._slots], "short_frames": list(self._short_frames),
                "short_next": self._short_next, "last_long_term": self._last_long_term}

    def load_state(self, state: dict, device: torch.device) -> None:
        """Hold exactly what :meth:`state` saved (its buffers, capacity included, copied to ``device``).

        Copied even on the state's own device: the memory is written in place, and a state loaded as it is
        would be changed by this memory, and shared by every other memory loaded from it."""
        def move(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
            if len(tensors) != len(self.layout):
                raise ValueError(f"saved memory has {len(tensors)} layers, this model {len(self.layout)}")
            return [None if t is None else t.to(device, copy=True) for t in tensors]

        self._long_keys, self._long_values = move(state["long_keys"]), move(state["long_values"])
        self._short_keys, self._short_values = move(state["short_keys"]), move(state["short_values"])
        self._slots = [_Slot(int(f), bool(r)) for f, r in state["slots"]]
        self._short_frames = [int(f) for f in state["short_frames"]]
        self._short_next = int(state["short_next"])
        self._last_long_term = state["last_long_term"]

    def nbytes(self) -> int:
        """Bytes held by the memory's buffers (allocated capacity, not only the valid part)."""
        tensors = [*self._long_keys, *self._long_values, *self._short_keys, *self._short_values]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _write(buffer: torch.Tensor | None, slot: int, item: torch.Tensor, slots: int) -> torch.Tensor:
    """Put ``item`` at ``slot`` of ``buffer``, whose dim 0 holds ``slots`` items of ``item.shape[0]`` rows each
    (allocated on first use, in ``item``'s dtype: memories stay in the compute precision). In place, or out
    of place while autograd records (training)."""
    rows = item.shape[0]
    if buffer is None:
        buffer = item.new_zeros((slots * rows, *item.shape[1:]))
    if torch.is_grad_enabled() and (item.requires_grad or buffer.requires_grad):
        index = torch.arange(slot * rows, (slot + 1) * rows, device=item.device)
        return buffer.index_copy(0, index, item.to(buffer.dtype))
    buffer[slot * rows:(slot + 1) * rows].copy_(item)
    return buffer
