"""Device choice and GPU kernel settings: the parity mode forbids what makes results depend on the kernels."""

from __future__ import annotations

import pytest
import torch

from trek_tracker.device import constant_tensors, peak_memory, select_device, set_fast_kernels
from trek_tracker.errors import UserError

FLAGS = (("cuda", "matmul", "allow_tf32"), ("cudnn", "allow_tf32"), ("cudnn", "benchmark"))


def _flags() -> list[bool]:
    values = []
    for path in FLAGS:
        obj = torch.backends
        for name in path:
            obj = getattr(obj, name)
        values.append(bool(obj))
    return values


@pytest.fixture()
def restored_flags():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


def test_fast_kernels_on_a_gpu_and_none_in_the_parity_mode(restored_flags):
    """Setting the flags needs no GPU: a CUDA device object is enough."""
    set_fast_kernels(torch.device("cuda", 0), True)
    assert _flags() == [True, True, True]
    set_fast_kernels(torch.device("cuda", 0), False)
    assert _flags() == [False, False, False]
    set_fast_kernels(torch.device("cpu"), True)  # a CPU run leaves the process's GPU settings alone
    assert _flags() == [False, False, False]


def test_devices():
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        select_device("tpu")
    peak = peak_memory(torch.device("cpu"))
    assert peak["gpu_mib"] is None and peak["host_rss_mib"] > 50  # this process holds torch


def test_constant_tensors_are_built_once_per_arguments_and_usable_in_training():
    built = []

    @constant_tensors
    def ramp(n: int, device: torch.device) -> torch.Tensor:
        built.append(n)
        return torch.arange(n, dtype=torch.float32, device=device)

    cpu = torch.device("cpu")
    with torch.inference_mode():  # first asked for by the tracker
        a = ramp(3, cpu)
        assert ramp(3, cpu) is a and built == [3]
    assert ramp(4, cpu) is not a and built == [3, 4]
    assert not a.is_inference()  # an inference tensor could not be saved for backward
    w = torch.ones(3, requires_grad=True)
    (w / (a + 1)).sum().backward()  # the division saves the constant for backward
    assert torch.allclose(w.grad, 1 / (a + 1))


def test_thread_counts_follow_the_cpus_this_process_may_use(monkeypatch):
    """On a shared node (Slurm, taskset, a container) the process may use 6 of the machine's 128 CPUs:
    decoding threads, evaluation workers' torch threads and the dataset check are sized by the 6."""
    import os

    from trek_tracker.device import usable_cpus
    from trek_tracker.eval.runner import worker_threads
    from trek_tracker.video import decode_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert usable_cpus() == 6 and decode_threads() == 4
    assert [worker_threads(n) for n in (1, 2, 4, 8)] == [6, 3, 1, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert usable_cpus() == 1 and decode_threads() == 1 and worker_threads(2) == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows: the machine's count
    assert usable_cpus() == 128
