"""SEcm (AR34 c+m): Alpha-Refine's CVPR 2021 box refiner with its auxiliary mask head (docs/init.md#secm-network).

ResNet-34 features of a 256x256 crop; the reference kernel is the *central* 8x8 of the template's
layer3 (the template box is ignored, as in the official PtCorr); pixel-wise correlation -> 1x1 convs
-> squeeze-excite gives a 64x16x16 fused map, read by a soft-argmax corner head and a SiamMask-style
mask head that refines with conv1/layer1/layer2 features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trek_tracker.init.alpha_refine.attention import SqueezeExcite, pixel_correlation
from trek_tracker.init.alpha_refine.backbones import ResNet34Taps

INPUT_SIZE = 256


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU())


def _conv_relu2(cin: int, mid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(), nn.Conv2d(mid, cout, 3, padding=1), nn.ReLU())


class PointCorrelationNeck(nn.Module):
    """Correlate the test layer3 with the template's central kernel, then 1x1 convs and SE."""

    def __init__(self, pool_size: int = 8) -> None:
        super().__init__()
        channels = pool_size * pool_size
        self.post_corr = nn.Sequential(
            nn.Conv2d(channels, 128, 1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 128, 1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, channels, 1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.channel_attention = SqueezeExcite(channels, reduction=4)

    @staticmethod
    def reference_kernel(template_layer3: torch.Tensor) -> torch.Tensor:
        """Central half of the template map (rows/cols ``H/4 : 3H/4``): the official fixed ``sr = 2``."""
        h, w = template_layer3.shape[-2:]
        return template_layer3[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]

    def forward(self, kernel: torch.Tensor, test_layer3: torch.Tensor) -> torch.Tensor:
        return self.channel_attention(self.post_corr(pixel_correlation(kernel, test_layer3)))


class CornerHead(nn.Module):
    """Two conv towers scoring top-left / bottom-right corners on the 16x16 grid; soft-argmax.

    Grid values are cell corners ``16 * index`` (0..240), as in the official head; kept as
    non-persistent buffers so the state dict matches the checkpoint.
    """

    def __init__(self, inplanes: int = 64, channel: int = 256, grid: int = 16, stride: int = 16) -> None:
        super().__init__()
        for tag in ("tl", "br"):
            widths = [inplanes, channel, channel // 2, channel // 4, channel // 8]
            for i in range(4):
                setattr(self, f"conv{i + 1}_{tag}", _conv_bn_relu(widths[i], widths[i + 1], 3))
            setattr(self, f"conv5_{tag}", nn.Conv2d(channel // 8, 1, 1))
        self.grid = grid
        index = torch.arange(grid, dtype=torch.float32) * stride
        self.register_buffer("coord_x", index.repeat(grid), persistent=False)
        self.register_buffer("coord_y", index.repeat_interleave(grid), persistent=False)

    def _score(self, x: torch.Tensor, tag: str) -> torch.Tensor:
        for i in range(1, 5):
            x = getattr(self, f"conv{i}_{tag}")(x)
        return getattr(self, f"conv5_{tag}")(x)

    def _soft_argmax(self, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prob = torch.softmax(score.reshape(score.shape[0], -1), dim=1)
        return (prob * self.coord_x).sum(1), (prob * self.coord_y).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, y1 = self._soft_argmax(self._score(x, "tl"))
        x2, y2 = self._soft_argmax(self._score(x, "br"))
        return torch.stack((x1, y1, x2, y2), dim=1)


class MaskHeadFine(nn.Module):
    """SiamMask-style refinement: 16 -> 32 -> 64 -> 128 with layer2/layer1/conv1 skips, then 256 + sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.v0, self.v1, self.v2 = (
            _conv_relu2(64, 16, 4),
            _conv_relu2(256, 64, 16),
            _conv_relu2(512, 128, 32),
        )
        self.h2, self.h1, self.h0 = _conv_relu2(64, 32, 32), _conv_relu2(16, 16, 16), _conv_relu2(4, 4, 4)
        self.post0 = nn.Conv2d(32, 16, 3, padding=1)
        self.post1 = nn.Conv2d(16, 4, 3, padding=1)
        self.post2 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, fused: torch.Tensor, low: Sequence[torch.Tensor], out_size: int = INPUT_SIZE) -> torch.Tensor:
        def up(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)

        v2, v1, v0 = self.v2(low[2]), self.v1(low[1]), self.v0(low[0])
        out = self.post0(up(self.h2(fused), v2) + v2)
        out = self.post1(up(self.h1(out), v1) + v1)
        out = self.post2(up(self.h0(out), v0) + v0)
        out = F.interpolate(out, size=(out_size, out_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(out)


class SEcm(nn.Module):
    """The AR34 c+m network: ``set_template(crop)`` then ``forward(crop, branches)``.

    The reference kernel is returned to the caller rather than kept inside the module (models stay
    stateless; the per-target state lives in :class:`~trek_tracker.init.alpha_refine.refiner.AlphaRefine`).
    """

    input_size = INPUT_SIZE

    def __init__(self, pool_size: int = 8) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.feature_extractor = ResNet34Taps()
        self.neck = PointCorrelationNeck(pool_size)
        self.corner_head = CornerHead(inplanes=pool_size * pool_size)
        self.mask_head = MaskHeadFine()
        self.feat_adjust = nn.ModuleList(
            [_conv_bn_relu(64, 64, 1), _conv_bn_relu(64, 256, 1), _conv_bn_relu(128, 512, 1)]
        )

    def reference_kernel(self, template: torch.Tensor, box_crop_xywh: torch.Tensor | None = None) -> torch.Tensor:
        """Kernel from a normalised template crop (1, 3, S, S); the box is unused (official behaviour)."""
        feat = self.feature_extractor(template, ["layer3"])["layer3"]
        return self.neck.reference_kernel(feat)

    def forward(
        self, crop: torch.Tensor, kernel: torch.Tensor, branches: Sequence[str] = ("corner", "mask")
    ) -> dict[str, torch.Tensor]:
        feats = self.feature_extractor(crop, ["conv1", "layer1", "layer2", "layer3"])
        fused = self.neck(kernel, feats["layer3"])
        out = {"feat": fused}
        if "corner" in branches:
            out["corner"] = self.corner_head(fused)
        if "mask" in branches:
            low = [adj(feats[name]) for adj, name in zip(self.feat_adjust, ("conv1", "layer1", "layer2"), strict=True)]
            out["mask"] = self.mask_head(fused, low, crop.shape[-1])
        return out
