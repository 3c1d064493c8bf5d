"""Running out of memory is recognised as such (GPU or host) and said in one line; other errors pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.damaged import allocation_failure
from trek_tracker.errors import OutOfMemory, memory_errors, memory_shortage, out_of_memory_message


def test_failed_allocations_are_recognised():
    assert memory_shortage(allocation_failure("gpu")) == "gpu"
    assert memory_shortage(allocation_failure("host")) == "host"  # PyTorch's CPU allocator: a RuntimeError
    with pytest.raises(MemoryError) as numpy_failure:
        np.empty(1 << 50, dtype=np.uint8)
    assert memory_shortage(numpy_failure.value) == "host"
    with pytest.raises(RuntimeError) as other:
        torch.zeros(2, 3) @ torch.zeros(2, 3)
    assert memory_shortage(other.value) is None
    assert memory_shortage(ValueError("CUDA out of memory")) is None  # only the allocators' own errors


def test_the_message_quotes_the_allocator_and_the_hint():
    line = out_of_memory_message(allocation_failure("gpu"), "while tracking clip", "a smaller --x", "frames kept")
    assert line == ("the GPU ran out of memory while tracking clip (GPU 0: asked for 2.00 GiB with 1.50 GiB of "
                    "79.19 GiB free); frames kept; use a smaller --x, or free the GPU (another process may hold "
                    "its memory: see nvidia-smi)")
    bare = out_of_memory_message(torch.OutOfMemoryError("out of memory"), hint="less")
    assert bare == "the GPU ran out of memory; use less, or free the GPU (another process may hold its memory: " \
                   "see nvidia-smi)"
    assert out_of_memory_message(allocation_failure("host"), "at step 3", "less") == \
        "the machine ran out of memory (RAM) at step 3; use less, or a machine with more memory"


def test_memory_errors_turns_only_allocation_failures_into_one_line():
    step = [1]
    with pytest.raises(OutOfMemory, match=r"^the GPU ran out of memory at step 7 ") as caught:
        with memory_errors(lambda: f"at step {step[0]}"):
            step[0] = 7
            raise allocation_failure("gpu")
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    with pytest.raises(RuntimeError, match="shapes"), memory_errors("anywhere"):
        raise RuntimeError("shapes cannot be multiplied")


def test_an_inner_stages_out_of_memory_keeps_its_remedy_and_gains_what_the_outer_one_kept():
    """The first-frame mask says its own remedy (a smaller SAM); the evaluation around it adds the runs it
    kept, which an inner stage cannot know."""
    with pytest.raises(OutOfMemory) as info:
        with memory_errors("while tracking r7", kept="3 runs finished and are kept"):
            with memory_errors("while making the first-frame mask (--init sam)", "a smaller SAM"):
                raise MemoryError()
    message = str(info.value)
    assert "first-frame mask" in message and "a smaller SAM" in message
    assert message.endswith("; 3 runs finished and are kept") and "\n" not in message
    assert "while tracking" not in message  # the inner stage is the one that ran out
