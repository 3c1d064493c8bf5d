"""ARnet_seg_mask: Alpha-Refine's dedicated mask network, "ARcm_coco_seg_only_mask_384" (docs/init.md#seg384-network).

ResNet-50 features of a 384x384 crop. The reference kernel is a PrRoIPool (P x P) of the template's
layer4 (stride 16) over the template box; pixel-wise correlation with the test layer4 gives P*P score
channels, refined by squeeze-excite and a non-local block, then an FRTM-style segmentation decoder
(TSE / RRB / CAB over layer5..layer2) and a fixed bicubic 2x pyramid up to ``2 * 16 * P`` pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.init.alpha_refine.attention import NonLocal2d, SqueezeExcite, pixel_correlation
from trek_tracker.init.alpha_refine.backbones import ResNet50SegTaps
from trek_tracker.init.alpha_refine.prroi_pool import prroi_pool2d

INPUT_SIZE = 384
DECODER_LAYERS = {"layer5": 2048, "layer4": 1024, "layer3": 512, "layer2": 256}  # deep to shallow


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def _resize_to(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


class CorrNLNeck(nn.Module):
    """PrRoIPool kernel, pixel-wise correlation, squeeze-excite, non-local block."""

    def __init__(self, pool_size: int) -> None:
        super().__init__()
        self.pool_size = pool_size
        channels = pool_size * pool_size
        self.channel_attention = SqueezeExcite(channels, reduction=4)
        self.spatial_attention = NonLocal2d(channels)

    def reference_kernel(self, template_layer4: torch.Tensor, box_crop_xywh: torch.Tensor) -> torch.Tensor:
        box = box_crop_xywh.reshape(-1, 4).to(template_layer4.dtype)
        rois = torch.cat(
            [
                torch.arange(box.shape[0], dtype=box.dtype, device=box.device)[:, None],
                box[:, :2],
                box[:, :2] + box[:, 2:],
            ],
            1,
        )
        return prroi_pool2d(template_layer4.float(), rois, self.pool_size, self.pool_size, 1 / 16)

    def forward(self, kernel: torch.Tensor, test_layer4: torch.Tensor) -> torch.Tensor:
        return self.spatial_attention(self.channel_attention(pixel_correlation(kernel, test_layer4)))


class TSE(nn.Module):
    """Reduce a backbone level to 64 channels, append the resized correlation scores, three 3x3 convs."""

    def __init__(self, feat_channels: int, score_channels: int, out_channels: int) -> None:
        super().__init__()
        both = score_channels + out_channels
        self.reduce = nn.Sequential(
            _conv(feat_channels, out_channels, 1), nn.ReLU(), _conv(out_channels, out_channels, 1)
        )
        self.transform = nn.Sequential(
            _conv(both, both, 3),
            nn.ReLU(),
            _conv(both, both, 3),
            nn.ReLU(),
            _conv(both, out_channels, 3),
            nn.ReLU(),
        )

    def forward(self, feat: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.reduce(feat)
        pooled = h.mean(dim=(2, 3), keepdim=True)
        h = self.transform(torch.cat([h, _resize_to(scores, h.shape[-2:])], dim=1))
        return h, pooled


class RRB(nn.Module):
    """Residual refinement block: 1x1 conv, then conv-BN-ReLU-conv added back, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1x1 = _conv(channels, channels, 1)
        self.bblock = nn.Sequential(
            _conv(channels, channels, 3),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            _conv(channels, channels, 3, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1x1(x)
        return F.relu(h + self.bblock(h))


class CAB(nn.Module):
    """Channel attention from pooled deeper + shallower features; the deeper map is added after upsampling."""

    def __init__(self, channels: int, deepest: bool) -> None:
        super().__init__()
        self.deepest = deepest
        self.convreluconv = nn.Sequential(_conv(2 * channels, channels, 1), nn.ReLU(), _conv(channels, channels, 1))

    def forward(self, deeper: torch.Tensor, shallower: torch.Tensor) -> torch.Tensor:
        deeper_pool = deeper if self.deepest else deeper.mean(dim=(2, 3), keepdim=True)
        gate = self.convreluconv(torch.cat([shallower.mean(dim=(2, 3), keepdim=True), deeper_pool], dim=1))
        out = shallower * torch.sigmoid(gate)
        return out + _resize_to(deeper, out.shape[-2:])


def _cubic_weights(offset: float, a: float = -0.75) -> torch.Tensor:
    """Keys cubic-convolution weights (a = -0.75) for the 4 taps at ``offset + (-1, 0, 1, 2)``."""
    t = (offset + torch.arange(-1, 3, dtype=torch.float32)).abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


class BicubicUp2x(nn.Module):
    """Fixed 2x bicubic upsampling as four depthwise 4x4 phase filters (replicate padding).

    Phase ``(i, j)`` of output pixel ``(2r + i, 2c + j)`` uses the 4x4 neighbourhood with sub-pixel
    offsets -0.25 (even) / -0.75 (odd). The filters are fixed, so they are non-persistent buffers.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        even, odd = _cubic_weights(-0.25), _cubic_weights(-0.75)
        phases = [torch.outer(rows, cols) for rows in (even, odd) for cols in (even, odd)]
        self.register_buffer("filters", torch.stack(phases)[:, None, None], persistent=False)  # (4, 1, 1, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
        outs = [F.conv2d(padded, f.expand(c, 1, 4, 4), groups=c) for f in self.filters]  # each (n, c, h+1, w+1)
        top = torch.stack(outs[:2], dim=-1).reshape(n, c, h + 1, 2 * (w + 1))
        bottom = torch.stack(outs[2:], dim=-1).reshape(n, c, h + 1, 2 * (w + 1))
        full = torch.stack((top, bottom), dim=-2).reshape(n, c, 2 * (h + 1), 2 * (w + 1))
        return full[:, :, 1:-1, 1:-1]


class Projector(nn.Module):
    """Bicubic 2x, conv 64->32, ReLU, bicubic 2x, bilinear to the output size, conv 32->1 (logits)."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels // 2, 3)
        self.up1 = BicubicUp2x(channels)
        self.conv2 = _conv(channels // 2, 1, 3)
        self.up2 = BicubicUp2x(channels // 2)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.up2(F.relu(self.conv1(self.up1(x))))
        return self.conv2(_resize_to(x, size))


class SegDecoder(nn.Module):
    """FRTM-style decoder over layer5 -> layer2; each level gets the correlation scores resized to it."""

    def __init__(self, score_channels: int, channels: int = 64) -> None:
        super().__init__()
        self.TSE, self.RRB1, self.CAB, self.RRB2 = (
            nn.ModuleDict(),
            nn.ModuleDict(),
            nn.ModuleDict(),
            nn.ModuleDict(),
        )
        for name, feat_channels in DECODER_LAYERS.items():
            self.TSE[name] = TSE(feat_channels, score_channels, channels)
            self.RRB1[name] = RRB(channels)
            self.CAB[name] = CAB(channels, deepest=name == "layer5")
            self.RRB2[name] = RRB(channels)
        self.project = Projector(channels)

    def forward(self, scores: torch.Tensor, feats: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = None
        for name in DECODER_LAYERS:
            h, pooled = self.TSE[name](feats[name], scores)
            h = self.CAB[name](pooled if x is None else x, self.RRB1[name](h))
            x = self.RRB2[name](h)
        return self.project(x, size)


class ARSegMask(nn.Module):
    """The ``ARnet_seg_mask`` network (mask only). ``pool_size`` comes from the checkpoint (12 for 384)."""

    input_size = INPUT_SIZE

    def __init__(self, pool_size: int = 12) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.output_size = 2 * 16 * pool_size
        self.feature_extractor = ResNet50SegTaps()
        self.neck = CorrNLNeck(pool_size)
        self.refiner = SegDecoder(pool_size * pool_size)

    def reference_kernel(self, template: torch.Tensor, box_crop_xywh: torch.Tensor) -> torch.Tensor:
        """PrRoIPool kernel (1, 1024, P, P) from a normalised template crop and the box in crop pixels."""
        feat = self.feature_extractor(template, ["layer4"])["layer4"]
        return self.neck.reference_kernel(feat, box_crop_xywh)

    def forward(self, crop: torch.Tensor, kernel: torch.Tensor, branches=("mask",)) -> dict[str, torch.Tensor]:
        feats = self.feature_extractor(crop, ["layer2", "layer3", "layer4", "layer5"])
        scores = self.neck(kernel, feats["layer4"])
        logits = self.refiner(scores, feats, (self.output_size, self.output_size))
        return {"feat": scores, "mask": torch.sigmoid(logits)}
