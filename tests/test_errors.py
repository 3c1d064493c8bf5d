"""Running out of memory is recognised as such (GPU or host) and said in one line; other errors pass. Every
reader of torch files says in one line why a file did not load."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.damaged import allocation_failure
from trek_tracker.errors import (
    OutOfMemory,
    UserError,
    load_failure,
    memory_errors,
    memory_shortage,
    out_of_memory_message,
    refused_class,
)


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


def _unloadable_files(tmp_path: Path) -> dict[str, Path]:
    """A file holding a pickled object besides tensors, and a truncated one."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "objects.pth")
    data = (tmp_path / "objects.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    return {"objects": tmp_path / "objects.pth", "truncated": tmp_path / "truncated.pth"}


def test_a_refused_pickled_class_is_named_and_other_failures_give_their_first_sentence(tmp_path):
    files = _unloadable_files(tmp_path)
    with pytest.raises(Exception) as refused:
        torch.load(files["objects"], weights_only=True)
    assert refused_class(refused.value) == "argparse.Namespace"
    assert load_failure(refused.value) == "it holds pickled objects (argparse.Namespace)"
    with pytest.raises(Exception) as damaged:
        torch.load(files["truncated"], weights_only=True)
    assert refused_class(damaged.value) is None
    reason = load_failure(damaged.value)
    assert reason.startswith(type(damaged.value).__name__ + ": ") and "\n" not in reason and len(reason) < 200


def _readers():
    from trek_tracker.init.sam import read_sam_state
    from trek_tracker.modeling.checkpoints import read_checkpoint
    from trek_tracker.run_folder import load_state_file
    from trek_tracker.weights.content import _tensor_dict

    return {"checkpoint": read_checkpoint, "sam": read_sam_state, "saved state": load_state_file,
            "weights content": lambda path: _tensor_dict(path, "a SAM")}


@pytest.mark.parametrize("reader", ["checkpoint", "sam", "saved state", "weights content"])
def test_every_torch_file_reader_says_in_one_line_why_a_file_did_not_load(tmp_path, reader):
    read = _readers()[reader]
    files = _unloadable_files(tmp_path)
    with pytest.raises(UserError) as refused:
        read(files["objects"])
    with pytest.raises(UserError) as damaged:
        read(files["truncated"])
    for err, name in ((refused, "objects.pth"), (damaged, "truncated.pth")):
        text = str(err.value)
        # PyTorch's own text spans paragraphs, holds terminal escapes and advises weights_only=False
        assert name in text and "\n" not in text and "\x1b" not in text and "weights_only" not in text, text
        assert len(text) < 400, text
    assert "argparse.Namespace" in str(refused.value)
