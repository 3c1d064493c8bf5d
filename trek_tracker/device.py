"""Choosing the torch device from a user's ``--device`` value: the one rule for tracking, evaluation and
training.

``auto`` is the local process's GPU when CUDA is there (``LOCAL_RANK`` under ``torchrun``, the task's place on
the node under ``srun`` when its tasks share the GPUs, else GPU 0) and
the CPU otherwise; ``cuda`` means that same GPU; ``cuda:N`` a given one; ``cpu`` the CPU. Asking for a GPU
that is not there is a user error, said in one line. The chosen GPU becomes the current CUDA device, so
nothing later creates a context on (or synchronises) another card.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from trek_tracker.errors import UserError
from trek_tracker.launch import env_int

_CUDA = re.compile(r"^cuda(?::(\d+))?$")
F = TypeVar("F", bound=Callable)


def select_device(requested: str = "auto"):
    """The ``torch.device`` for ``requested`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), made this process's
    current device."""
    import torch

    device = parse_device(requested)
    if device.type == "cuda":
        torch.cuda.set_device(device.index)
    return device


def parse_device(requested: str = "auto"):
    """The ``torch.device`` for ``requested``, checked to exist, without touching it: making a GPU current
    opens a context on it (about 0.5 GB), which a parent that only hands GPUs to its workers must not hold."""
    import torch

    value = (requested or "auto").strip().lower()
    if value == "cpu":
        return torch.device("cpu")
    if value == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        value = "cuda"
    match = _CUDA.match(value)
    if match is None:
        raise UserError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {requested} was asked for but no CUDA GPU is available to PyTorch; "
                        "use --device cpu (or auto)")
    count = torch.cuda.device_count()
    index = int(match.group(1)) if match.group(1) is not None else _local_gpu(count)
    if index >= count:
        raise UserError(f"--device {requested}: this machine has {count} CUDA GPU(s), numbered 0..{count - 1}")
    return torch.device("cuda", index)


def _local_gpu(count: int) -> int:
    """The GPU of this process among the ``count`` it sees: ``LOCAL_RANK`` under ``torchrun``; its task's
    place on the node under ``srun`` (``SLURM_LOCALID``) when the tasks share the node's GPUs (a task bound
    to its own GPU sees only that one); else the first. Both: ``srun`` started a ``torchrun`` in each of
    several tasks on one node, each numbering its processes from 0; where the tasks share the node's GPUs,
    each task's processes take the next ``LOCAL_WORLD_SIZE`` of them, not all the first ones."""
    def read(name: str, default: int | None = None) -> int:
        return env_int(os.environ, name, default, stops="this process cannot tell which GPU is its own",
                       remedy="give --device cuda:N, or start it under torchrun or srun as they set it")

    task = read("SLURM_LOCALID", 0)
    if "LOCAL_RANK" in os.environ:
        rank, per_task = read("LOCAL_RANK"), read("LOCAL_WORLD_SIZE", 0)
        return task * per_task + rank if per_task and (task + 1) * per_task <= count else rank
    return task if count > 1 else 0


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (what ``taskset``, Slurm or a container grant),
    not the machine's count, which on a shared node can be many times more (``os.cpu_count()`` there would
    start one thread per core of the node, and threads that wait on each other run many times slower)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU); never touches another GPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_clock(device):
    """An event marking "now" in ``device``'s queue, for :class:`Readback`'s ``since`` (None on the CPU)."""
    import torch

    if device.type != "cuda":
        return None
    event = torch.cuda.Event(enable_timing=True)
    event.record(torch.cuda.current_stream(device))
    return event


class Readback:
    """Tensors on their way to the host, without waiting for the device.

    On a GPU each copy is queued behind the work that computes it, into pinned memory, and one event marks
    the copies done: the caller goes on queueing the next frame's work while the GPU finishes this one, and
    whoever reads the values (:meth:`get`, the loop's writer thread) waits for them then. On the CPU the
    tensors are the values. With ``since`` (a :func:`device_clock` event recorded when the caller began),
    :attr:`seconds` is the GPU's time from then until the copies were done: the frame's own time in a
    pipeline whose host runs ahead, excluding the previous frame's work still queued when it began.
    """

    def __init__(self, tensors: dict[str, Any], since: Any = None) -> None:
        import torch

        self._tensors = tensors
        self._since = since
        self._event = None
        self._seconds: float | None = None
        self._lock = threading.Lock()  # the writer thread and a state being saved may both wait
        cuda = [t.device for t in tensors.values() if t.device.type == "cuda"]
        if cuda:
            stream = torch.cuda.current_stream(cuda[0])
            host = {}
            for name, tensor in tensors.items():
                host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host[name].copy_(tensor, non_blocking=True)
            self._tensors = host
            # blocking: the thread that waits for it sleeps instead of spinning on a core the decoding
            # threads need
            self._event = torch.cuda.Event(enable_timing=since is not None, blocking=True)
            self._event.record(stream)

    def get(self) -> dict[str, Any]:
        """The tensors on the host (CPU tensors), once their copies are done."""
        with self._lock:
            if self._event is not None:
                self._event.synchronize()
                if self._since is not None:
                    self._seconds = self._since.elapsed_time(self._event) / 1000
                self._event = self._since = None
        return self._tensors

    @property
    def seconds(self) -> float | None:
        """The device's time from ``since`` to the copies' end (None on the CPU or without ``since``)."""
        self.get()
        return self._seconds


def set_fast_kernels(device, enabled: bool) -> None:
    """On a GPU, allow TensorFloat-32 in float32 matrix products and convolutions and let cuDNN time its
    convolution algorithms for each input shape (``cudnn.benchmark``: TREK-150's frames all have one size,
    so the encoder's and decoder's convolutions are tuned once per process) -- or forbid both, for the
    parity mode, whose results must not depend on which algorithm wins a timing."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cudnn.benchmark = enabled


@contextlib.contextmanager
def kernel_flags_kept() -> Iterator[None]:
    """Restore the process's TF32 and cuDNN autotuning flags on exit. A :class:`~trek_tracker.pipeline.Tracker`
    sets them for its precision (:func:`set_fast_kernels`), as a command that owns its process should; one
    built inside another's process (VOS validation during training, on one rank only) must not leave them
    changed behind it."""
    import torch

    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = flags


def peak_memory(device) -> dict[str, float | None]:
    """This process's peak memory so far, in MiB: resident host memory, and what PyTorch allocated on
    ``device`` when it is a GPU (None on a CPU). Recorded in ``run.json`` and logged by ``eval``."""
    import sys

    import torch

    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    except ImportError:  # not on this system (Windows)
        rss = None
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"host_rss_mib": None if rss is None else round(rss, 1), "gpu_mib": None if gpu is None else round(gpu, 1)}


def constant_tensors(build: F) -> F:
    """Memoise ``build``, a function of hashable arguments (a device among them) that returns small constant
    tensors: per-frame code then neither rebuilds them nor copies them from the host, and a blocking upload
    (``torch.tensor(..., device=cuda)``) would wait for every kernel queued before it, stalling the GPU in
    the middle of a frame. Built outside inference mode, so that training may use them too; under
    ``torch.compile`` traced as they are (the graph holds them). Callers never modify them in place."""
    import torch

    @functools.lru_cache(maxsize=64)
    def cached(*args):
        with torch.inference_mode(False), torch.no_grad():
            return build(*args)

    @functools.wraps(build)
    def constant(*args):
        return build(*args) if torch.compiler.is_compiling() else cached(*args)

    constant.cache_clear = cached.cache_clear
    _KEPT.append(cached)
    return constant


_KEPT: list = []  # every constant_tensors cache


def forget_constant_tensors() -> None:
    """Drop every constant kept by :func:`constant_tensors`: a test that fakes a device (tensors without
    values) must not leave its tensors for later code on that device."""
    for cached in _KEPT:
        cached.cache_clear()
