"""The paper's hybrid input (sec. 3.1): a BiT ResNet's feature map, cut into 1x1 patches.

    "As an alternative to raw image patches, the input sequence can be formed from feature maps
    of a CNN. [...] the patches can have spatial size 1x1, which means that the input sequence is
    obtained by simply flattening the spatial dimensions of the feature map and projecting to the
    Transformer dimension."  (sec. 3.1, "Hybrid Architecture")

The CNN is Big Transfer's ResNet (Kolesnikov et al. 2020) as the paper's appendix D.2 modifies it:
GroupNorm instead of BatchNorm and weight-standardised convolutions (both work at any batch size,
which large-scale pre-training needed), and, for R50+ViT-B/16, only the first three stages
(3, 4 and 9 units instead of 3, 4, 6, 3: "we remove stage 4, place the same number of layers in
stage 3"), so that the feature map has stride 16 and the grid of ViT-B/16. The blocks are
*not* pre-activation (v1.5: the stride sits in the 3x3 convolution), as in the official
``models_resnet.py`` and timm's ``resnetv2.Bottleneck``; padding is TensorFlow's "SAME",
because the JAX weights were trained with it.

Module names follow timm's ``HybridEmbed(ResNetV2(preact=False))``
(``backbone.stem.conv``, ``backbone.stages.0.blocks.0.conv1`` ...), so its state dicts map one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import bit_stage_channels, bit_stride
from .embed import lecun_normal_

# As timm's port computes (vision_transformer_hybrid._resnetv2): eps 1e-8 inside the square root of
# the standardisation, and torch's GroupNorm default of 1e-5. The official models_resnet.py divides
# by std + 1e-5 and Flax's GroupNorm uses 1e-6; vitkit follows the port, whose logits the tests
# compare (see interop/jax.py).
STD_CONV_EPS = 1e-8
GROUP_NORM_EPS = 1e-5
GROUPS = 32  # BiT's GroupNorm(32)


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "SAME" padding: output size ceil(size / stride), any extra pixel on the right
    and bottom. It depends on the input size, so it is computed here rather than in the layer."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / stride) - 1) * stride + kernel - ih, 0)
    pw = max((math.ceil(iw / stride) - 1) * stride + kernel - iw, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class StdConv2d(nn.Conv2d):
    """A convolution whose kernel is standardised (zero mean, unit variance over each output
    filter's fan-in) at every call: weight standardisation (Qiao et al. 2019), which BiT pairs with
    GroupNorm (BiT sec. 2.4) so that no statistic depends on the batch. Pads "SAME"."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + STD_CONV_EPS)
        return F.conv2d(pad_same(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=GROUP_NORM_EPS)


class Root(nn.Module):
    """BiT's root block: 7x7 stride-2 convolution, GroupNorm, ReLU, 3x3 stride-2 max pool (stride 4)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = StdConv2d(in_channels, channels, 7, stride=2)
        self.norm = group_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))  # (B, C, H, W) -> (B, c, H/2, W/2)
        return F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), 3, 2)  # -> (B, c, H/4, W/4)


class Bottleneck(nn.Module):
    """One residual unit: 1x1 down to ``out/4`` channels, 3x3 (carrying the stride), 1x1 back up,
    each followed by GroupNorm; ReLU after the first two and after the sum with the shortcut. The
    first unit of a stage projects the shortcut (1x1 convolution + GroupNorm)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        mid = out_channels // 4
        project = stride != 1 or in_channels != out_channels
        self.downsample = Projection(in_channels, out_channels, stride) if project else None
        self.conv1 = StdConv2d(in_channels, mid, 1)
        self.norm1 = group_norm(mid)
        self.conv2 = StdConv2d(mid, mid, 3, stride=stride)
        self.norm2 = group_norm(mid)
        self.conv3 = StdConv2d(mid, out_channels, 1)
        self.norm3 = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class Projection(nn.Module):
    """The shortcut of a stage's first unit: 1x1 convolution with the stage's stride, GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2d(in_channels, out_channels, 1, stride=stride)
        self.norm = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Stage(nn.Module):
    """``units`` bottlenecks; the first halves the size (except in stage 1, after the pooled root)."""

    def __init__(self, in_channels: int, out_channels: int, units: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Bottleneck(in_channels, out_channels, stride))
        for _ in range(units - 1):
            self.blocks.append(Bottleneck(out_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class BiTResNet(nn.Module):
    """The root block and the stages: (B, C, H, W) -> (B, 4*root*2^(S-1), H/stride, W/stride), with
    stride 4 * 2^(S-1) for S >= 1 stages (16 for R50's three, 32 for R26's four)."""

    def __init__(self, in_channels: int, units: tuple[int, ...], root_channels: int = 64) -> None:
        super().__init__()
        self.stem = Root(in_channels, root_channels)
        self.stages = nn.Sequential()
        c_in = root_channels
        for i, (n, c_out) in enumerate(zip(units, bit_stage_channels(root_channels, len(units)), strict=True)):
            self.stages.add_module(str(i), Stage(c_in, c_out, n, stride=1 if i == 0 else 2))
            c_in = c_out
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class HybridEmbed(nn.Module):
    """x_p E for the hybrid: the BiT ResNet's feature map, projected to the Transformer width by a
    convolution whose kernel and stride are ``patch_size`` divided by the backbone's stride (1x1 for
    the paper's hybrids, whose ViT patch size *is* the feature map's cell)."""

    def __init__(
        self, patch_size: int, in_channels: int, width: int, units: tuple[int, ...], root_channels: int
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.backbone = BiTResNet(in_channels, units, root_channels)
        k = patch_size // bit_stride(len(units))
        self.proj = nn.Conv2d(self.backbone.out_channels, width, kernel_size=k, stride=k)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal convolutions (fan out), as timm's ResNetV2; unit GroupNorm scales except each
        unit's last, which starts at zero (``gn3``'s ``scale_init=zeros`` in the official
        ``models_resnet.py``), so every unit begins as its shortcut; the projection LeCun-normal
        with a zero bias, like the plain patch projection."""
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.backbone.modules():
            if isinstance(m, Bottleneck) and not m.norm3.weight.is_meta:
                nn.init.zeros_(m.norm3.weight)
        if not self.proj.weight.is_meta:
            lecun_normal_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.backbone(x))  # (B, C, H, W) -> (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # -> (B, N, D)
