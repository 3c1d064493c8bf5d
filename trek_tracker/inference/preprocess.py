"""Frame and label preprocessing for the DeAOT models, reproducing the official test pipeline exactly.

Exactness matters: the network input size decides the token grid and the ID-bank sampling, so a size that is
off by one pixel changes every output. The arithmetic below therefore copies the official order of float64
operations, ``int`` truncation and NumPy's half-to-even rounding, and the resize/normalisation keep the
official float32/float64 steps (docs/inference.md#network-input-size, #image-preprocessing).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from trek_tracker.device import constant_tensors
from trek_tracker.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16


def _check_size(h: object, w: object, what: str) -> tuple[int, int]:
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InputError(f"{what} must be two positive integers (height, width), got ({h!r}, {w!r})")
    return int(h), int(w)  # type: ignore[arg-type]


def _align(n: int, align_corners: bool) -> int:
    if align_corners:  # sizes 16k + 1, so corner pixels of every stride line up
        return n if (n - 1) % STRIDE == 0 else int(np.around((n - 1) / STRIDE) * STRIDE + 1)
    return n if n % STRIDE == 0 else int(np.around(n / STRIDE) * STRIDE)


def input_size(
    h: int,
    w: int,
    *,
    max_long_edge: float | None = 1040,
    max_short_edge: float | None = None,
    scale: float = 1.0,
    align_corners: bool = True,
    min_short_edge: float | None = None,
) -> tuple[int, int]:
    """Network input size ``(h, w)`` for a frame of ``h`` x ``w`` pixels (official ``MultiRestrictSize``).

    Caps the short edge, then the long edge (never upscaling), multiplies by the TTA ``scale`` and truncates,
    then aligns to stride 16: ``16k + 1`` for ``align_corners`` models (MobileNetV2, ResNet-50), ``16k`` for
    Swin. A size that is already aligned is kept.

    ``min_short_edge`` (HQTrack's ``MultiRestrictSize_``, VMOS) first *enlarges* a frame whose short edge
    is below it, in the same float64 steps as the short-edge cap.
    """
    h, w = _check_size(h, w, "frame size")
    for name, cap in (("max_long_edge", max_long_edge), ("max_short_edge", max_short_edge),
                      ("min_short_edge", min_short_edge)):
        if cap is not None and not cap > 0:
            raise InputError(f"{name} must be positive or None, got {cap!r}")
    if not (isinstance(scale, (int, float)) and scale > 0 and np.isfinite(scale)):
        raise InputError(f"scale must be a positive number, got {scale!r}")

    sc = 1.0
    if min_short_edge is not None and min(h, w) < min_short_edge:  # VMOS: enlarge small frames
        sc *= float(min_short_edge) / min(h, w)
    if max_short_edge is not None and min(h, w) > max_short_edge:
        sc *= float(max_short_edge) / min(h, w)
    new_h, new_w = sc * h, sc * w
    sc = 1.0
    long_edge = new_h if new_h > new_w else new_w
    if max_long_edge is not None and long_edge > max_long_edge:
        sc *= float(max_long_edge) / long_edge
    new_h, new_w = sc * new_h, sc * new_w
    new_h, new_w = int(new_h * scale), int(new_w * scale)
    out = _align(new_h, align_corners), _align(new_w, align_corners)
    if min(out) <= 0:
        raise InputError(f"a {w}x{h} frame is too small for this network at scale {scale} (its input would be "
                         f"{out[1]}x{out[0]} pixels); use larger frames or, for a Swin model, another backbone")
    return out


def to_network_input(rgb_uint8: np.ndarray, size: tuple[int, int], flip: bool = False,
                     resize: str = "float32") -> torch.Tensor:
    """(1, 3, h, w) float32 network input from an (H, W, 3) uint8 RGB frame.

    Cubic resize of the float32 frame (no clipping: the official pipeline keeps the overshoot), optional
    horizontal flip, then ``/255``, ``- mean``, ``/ std``; each of the last two steps evaluated in float64 and
    stored in float32, as NumPy does for the official in-place tuple operations.

    ``resize="uint8"`` is HQTrack's trackers' path (VMOS): see :func:`_uint8_network_input`.
    """
    if resize == "uint8":
        return _uint8_network_input(rgb_uint8, size, flip)
    if resize != "float32":
        raise InputError(f"resize must be 'float32' or 'uint8', got {resize!r}")
    if not isinstance(rgb_uint8, np.ndarray) or rgb_uint8.dtype != np.uint8:
        got = rgb_uint8.dtype if isinstance(rgb_uint8, np.ndarray) else type(rgb_uint8).__name__
        raise InputError(f"frame must be a uint8 numpy array, got {got}")
    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3 or min(rgb_uint8.shape[:2]) == 0:
        raise InputError(f"frame must have shape (H, W, 3) in RGB order, got {rgb_uint8.shape}")
    h, w = _check_size(*tuple(size), what="network input size")
    img = rgb_uint8.astype(np.float32)
    if (h, w) != img.shape[:2]:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    if flip:
        img = img[:, ::-1]
    img = img / np.float32(255.0)
    img -= np.asarray(IMAGENET_MEAN)  # float64 operand, result cast back to float32 in place
    img /= np.asarray(IMAGENET_STD)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def check_frame(rgb_uint8: object) -> None:
    """An (H, W, 3) uint8 RGB frame with both sides positive, or an :class:`InputError`."""
    if not isinstance(rgb_uint8, np.ndarray) or rgb_uint8.dtype != np.uint8:
        got = rgb_uint8.dtype if isinstance(rgb_uint8, np.ndarray) else type(rgb_uint8).__name__
        raise InputError(f"frame must be a uint8 numpy array, got {got}")
    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3 or min(rgb_uint8.shape[:2]) == 0:
        raise InputError(f"frame must have shape (H, W, 3) in RGB order, got {rgb_uint8.shape}")


def _uint8_network_input(rgb_uint8: np.ndarray, size: tuple[int, int], flip: bool) -> torch.Tensor:
    """VMOS (HQTrack's ``MultiRestrictSize_`` + ``MultiToTensor``): OpenCV's cubic resize of the **uint8**
    frame (fixed-point, rounded and saturated to 0..255), optional flip, then ``u / 255``, ``- mean``,
    ``/ std`` all in float64, cast to float32 once (golden README vmos §3)."""
    check_frame(rgb_uint8)
    h, w = _check_size(*tuple(size), what="network input size")
    img = rgb_uint8
    if (h, w) != img.shape[:2]:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    if flip:
        img = img[:, ::-1]
    x = (img / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))[None]


def resize_labels(label: torch.Tensor | np.ndarray, size: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """Nearest-resize a label map with PyTorch's legacy ``nearest`` (source index ``floor(i * in / out)``),
    after mirroring it when ``flip`` (a flipped TTA view's labels).

    Accepts (H, W), (N, H, W) or (N, C, H, W); returns a tensor of the same rank and dtype (NumPy input
    becomes a tensor). The source rows and columns are picked directly, in the label's own dtype, with the
    indices ``F.interpolate(mode="nearest")`` computes for a float32 map (``float32(i) * float32(in / out)``,
    floored): the same values, without copying a full-resolution map to float or mirroring it first.
    """
    h, w = _check_size(*tuple(size), what="label size")
    t = torch.from_numpy(np.ascontiguousarray(label)) if isinstance(label, np.ndarray) else label
    if not isinstance(t, torch.Tensor):
        raise InputError(f"label must be a torch tensor or numpy array, got {type(label).__name__}")
    if t.ndim not in (2, 3, 4) or min(t.shape[-2:]) == 0:
        raise InputError(f"label must have shape (H, W), (N, H, W) or (N, C, H, W), got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"label must hold integer or float ids, got {t.dtype}")
    if tuple(t.shape[-2:]) == (h, w) and not flip:
        return t
    rows = _nearest_index(t.shape[-2], h, t.device)
    cols = _nearest_index(t.shape[-1], w, t.device)
    if flip:
        cols = t.shape[-1] - 1 - cols
    return t.index_select(-2, rows).index_select(-1, cols)


@constant_tensors
def _nearest_index(src: int, dst: int, device: torch.device) -> torch.Tensor:
    """PyTorch's legacy nearest source index of each output position: ``floor(float32(i) * float32(src / dst))``,
    clamped to the input (built once per size and device)."""
    scale = torch.tensor(src, dtype=torch.float32) / dst
    i = torch.arange(dst, dtype=torch.float32)
    return (i * scale).floor().long().clamp_(max=src - 1).to(device)


# --------------------------------------------------------------------------- on the device
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a GPU and fp32 on the CPU (docs/inference.md#precision); others are kept."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_dtype(precision: str) -> torch.dtype:
    """The compute dtype of a resolved precision (float32 for fp32)."""
    return _DTYPES.get(precision, torch.float32)


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision (disabled for fp32)."""
    return torch.autocast(device.type, dtype=autocast_dtype(precision), enabled=precision != "fp32")


class Uploader:
    """Copies frames to the device through two pinned host buffers, so a copy overlaps the GPU's work on the
    previous frame. On the CPU a frame is used as it is."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: list[torch.Tensor] = []
        self._events: list = []
        self._next = 0

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return _wrap(image)
        if not self._buffers or tuple(self._buffers[0].shape) != image.shape:
            self._buffers = [torch.empty(image.shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
            self._events = [None, None]
        slot = self._next
        self._next = 1 - slot
        if self._events[slot] is not None:
            self._events[slot].synchronize()  # the copy that last used this buffer has finished
        self._buffers[slot].numpy()[...] = image
        tensor = self._buffers[slot].to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))  # the stream the copy went to, whatever GPU is current
        self._events[slot] = event
        return tensor


def _wrap(image: np.ndarray) -> torch.Tensor:
    """The frame as a CPU tensor without a copy, unless it is read-only (``np.asarray`` of a PIL image) or has a
    negative stride (an ``np.rot90`` or ``[::-1]`` view), which torch cannot wrap."""
    wrappable = image.flags.writeable and all(s >= 0 for s in image.strides)
    return torch.from_numpy(image if wrappable else image.copy())


class Frame:
    """One decoded RGB frame, handed to every engine of a tracker (TTA views, ensemble members): the host
    array for the exact CPU preprocessing, and the device copy, uploaded at most once, for the device path."""

    def __init__(self, image: np.ndarray, uploader: Uploader | None = None) -> None:
        self.host = image
        self._uploader = uploader
        self._tensor: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.host.shape

    def tensor(self) -> torch.Tensor:
        """The frame as (H, W, 3) uint8 on the uploader's device."""
        if self._tensor is None:
            self._tensor = self._uploader(self.host) if self._uploader is not None else _wrap(self.host)
        return self._tensor


def device_network_input(frame: torch.Tensor, size: tuple[int, int], flip: bool = False,
                         resize: str = "float32") -> torch.Tensor:
    """(1, 3, h, w) float32 network input from an (H, W, 3) uint8 frame, computed where the frame is.

    The same steps as :func:`to_network_input` (cubic resize without clipping, flip, ``/255``, ``- mean``,
    ``/ std``), in float32 with torch's bicubic kernel, which is OpenCV's (a = -0.75, half-pixel centres,
    clamped borders): on EPIC-KITCHENS 1080p frames the two differ by at most 0.015 grey levels
    (docs/inference.md#precision). Used by the mixed-precision modes; fp32 keeps the exact CPU path.
    ``resize="uint8"`` (VMOS) rounds and saturates the resized frame as a uint8 resize does (OpenCV's
    fixed-point kernel can differ by one level at a few pixels).
    """
    x = frame.permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)
        if resize == "uint8":
            x = x.round().clamp(0, 255)
    if flip:
        x = x.flip(-1)
    mean, std = _normalisation(x.device)
    return (x / 255.0 - mean) / std


@constant_tensors
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as (1, 3, 1, 1) float32 tensors on ``device`` (uploaded once per device)."""
    return (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).to(device),
            torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).to(device))
