"""Device choice and GPU kernel settings: the parity mode forbids what makes results depend on the kernels."""

from __future__ import annotations

import pytest
import torch

from trek_tracker.device import (
    Readback,
    constant_tensors,
    device_clock,
    kernel_flags_kept,
    parse_device,
    peak_memory,
    select_device,
    set_fast_kernels,
)
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
    with kernel_flags_kept():
        yield


def test_fast_kernels_on_a_gpu_and_none_in_the_parity_mode(restored_flags):
    """Setting the flags needs no GPU: a CUDA device object is enough."""
    set_fast_kernels(torch.device("cuda", 0), True)
    assert _flags() == [True, True, True]
    set_fast_kernels(torch.device("cuda", 0), False)
    assert _flags() == [False, False, False]
    set_fast_kernels(torch.device("cpu"), True)  # a CPU run leaves the process's GPU settings alone
    assert _flags() == [False, False, False]


def test_kept_kernel_flags_are_restored_whatever_was_set_inside():
    before = _flags()
    for enabled in (True, False):
        with kernel_flags_kept():
            set_fast_kernels(torch.device("cuda", 0), enabled)
            assert _flags() == [enabled] * 3
        assert _flags() == before
    with pytest.raises(RuntimeError), kernel_flags_kept():
        set_fast_kernels(torch.device("cuda", 0), not before[0])
        raise RuntimeError
    assert _flags() == before


def test_validation_during_training_leaves_the_kernel_flags_as_training_had_them(tmp_path, monkeypatch,
                                                                                   restored_flags):
    """Validation (rank 0 only) builds a Tracker, which on a GPU in bf16 turns TF32 and autotuning on for
    the process: afterwards the ranks must still train with the same kernels. Here the Tracker is made to
    set the flags as it would on a GPU."""
    import numpy as np
    from PIL import Image

    import trek_tracker.device as device_module
    from trek_tracker.modeling.registry import build_model
    from trek_tracker.train.validate import evaluate_model

    real = device_module.set_fast_kernels
    calls = []
    monkeypatch.setattr(device_module, "set_fast_kernels",
                        lambda device, enabled: calls.append(enabled) or real(torch.device("cuda", 0), True))
    for i in range(2):
        path = tmp_path / "JPEGImages" / "seq" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    label = tmp_path / "Annotations" / "seq" / "00000.png"
    label.parent.mkdir(parents=True)
    Image.fromarray(np.pad(np.ones((8, 8), np.uint8), 4)).save(label)
    set_fast_kernels(torch.device("cuda", 0), False)
    torch.manual_seed(0)
    evaluate_model(build_model("test_deaot_tiny"), tmp_path, max_long_edge=None)
    assert calls and _flags() == [False, False, False]


def test_a_parent_checks_the_gpus_it_hands_out_without_opening_a_context_on_them(monkeypatch):
    """`eval --device cuda:0,cuda:2` checks both exist in the parent; making each current there would hold a
    CUDA context (about 0.5 GB) on every listed GPU beside its worker's for the whole evaluation."""
    from trek_tracker.cli.eval import _devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    made_current = []
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert _devices("cuda:0,cuda:2") == ["cuda:0", "cuda:2"]
    assert parse_device("cuda:1") == torch.device("cuda", 1) and made_current == []
    with pytest.raises(UserError, match="3 CUDA GPU"):
        _devices("cuda:0,cuda:3")
    assert select_device("cuda:2") == torch.device("cuda", 2) and made_current == [2]


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


def test_constant_tensors_are_built_again_once_forgotten():
    from trek_tracker.device import forget_constant_tensors

    built = []

    @constant_tensors
    def zeros(n: int) -> torch.Tensor:
        built.append(n)
        return torch.zeros(n)

    a = zeros(2)
    forget_constant_tensors()
    assert zeros(2) is not a and built == [2, 2]


def test_an_empty_device_means_auto_and_a_device_is_read_without_case_or_spaces(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_device("") == torch.device("cpu") and parse_device(" CPU ") == torch.device("cpu")
    for key in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("") == torch.device("cuda", 0) and parse_device(" CUDA:1 ") == torch.device("cuda", 1)


def test_peak_memory_in_mib_of_the_host_and_of_a_gpu(monkeypatch):
    """The host's peak resident memory as getrusage gives it for this process: KiB on Linux, bytes on macOS;
    the GPU's as PyTorch gives it, in bytes."""
    import resource
    import sys
    from types import SimpleNamespace

    for platform, unit in (("linux", 2**10), ("darwin", 2**20)):
        monkeypatch.setattr(sys, "platform", platform)
        monkeypatch.setattr(resource, "getrusage", lambda who, unit=unit: SimpleNamespace(
            ru_maxrss=(3 * unit + unit // 2) if who == resource.RUSAGE_SELF else 0))
        assert peak_memory(torch.device("cpu")) == {"host_rss_mib": 3.5, "gpu_mib": None}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**20 + 2**19)
    assert peak_memory(torch.device("cuda", 0))["gpu_mib"] == 3.5


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
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # which may be unknown
    assert usable_cpus() == 1


@pytest.mark.parametrize("env, count, expected", [
    ({"LOCAL_RANK": "1", "SLURM_LOCALID": "3"}, 4, 1),  # torchrun's rank wins
    ({"SLURM_LOCALID": "3"}, 4, 3),  # srun tasks sharing a node's 4 GPUs: one each
    ({"SLURM_LOCALID": "3"}, 1, 0),  # a task bound to its own GPU sees only that one
    ({"SLURM_LOCALID": "1"}, 2, 1),  # two tasks sharing a node's two GPUs
    ({}, 4, 0),
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 8, 1),  # torchrun alone
    # srun --ntasks-per-node=2 torchrun --standalone --nproc-per-node=2: the second task takes GPUs 2 and 3
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "SLURM_LOCALID": "1"}, 4, 3),
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "SLURM_LOCALID": "1"}, 4, 2),
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "SLURM_LOCALID": "1"}, 2, 1),  # each task sees its own two
    ({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4", "SLURM_LOCALID": "0"}, 8, 3),  # one task per node
])
def test_the_local_gpu_under_a_launcher(monkeypatch, env, count, expected):
    for key in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert parse_device("auto") == parse_device("cuda") == torch.device("cuda", expected)


@pytest.mark.parametrize("env, said", [
    ({"LOCAL_RANK": ""}, "LOCAL_RANK is '', not a whole number"),
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "two"}, "LOCAL_WORLD_SIZE is 'two'"),
    ({"SLURM_LOCALID": "1.0"}, "SLURM_LOCALID is '1.0'"),
])
def test_a_malformed_launcher_variable_is_one_line_naming_it_when_the_gpu_is_chosen(monkeypatch, env, said):
    for key in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(UserError, match=f"{said}.*cannot tell which GPU is its own; give --device cuda:N"):
        parse_device("auto")
    assert parse_device("cuda:2") == torch.device("cuda", 2)  # a GPU given by number reads none of them


def test_readback_on_the_cpu_is_the_tensors_and_takes_no_time():
    tensors = {"labels": torch.arange(6, dtype=torch.uint8)}
    back = Readback(tensors, since=device_clock(torch.device("cpu")))
    assert back.get()["labels"] is tensors["labels"] and back.seconds is None


@pytest.mark.cuda
def test_readback_from_a_gpu_gives_pinned_host_copies_of_the_same_dtype_and_the_time_since_the_clock():
    gpu = torch.device("cuda", 0)
    tensors = {"labels": torch.arange(6, dtype=torch.uint8, device=gpu), "probs": torch.rand(2, 3, device=gpu)}
    since = device_clock(gpu)
    back = Readback(tensors, since=since)
    got = back.get()
    for name, tensor in tensors.items():
        assert got[name].device.type == "cpu" and got[name].is_pinned() and got[name].dtype == tensor.dtype
        assert torch.equal(got[name], tensor.cpu())
    assert back.seconds is not None and back.seconds >= 0
    assert Readback(tensors).seconds is None  # no clock, no time
