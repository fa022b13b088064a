"""InfoPro-style "ResNet-16" (Wang et al., ICLR 2021; SGLR code) split into five blocks."""

from torch import Tensor, nn

# Padded stride-2 convs and an adaptive pool keep any side >= 1 non-empty.
RESNET_MIN_SIDE = 1


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """He et al. 2016 basic residual block: conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        # A projection is needed only when the residual cannot be added as is.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
    """`n` BasicBlocks; only the first changes width and stride."""
    blocks = [BasicBlock(c_in, c_out, stride)]
    blocks += [BasicBlock(c_out, c_out) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def build_resnet_blocks(input_shape: tuple[int, int, int], n_classes: int) -> list[nn.Module]:
    """Return [stem, stage1, stage2, stage3, head] for a `(C, H, W)` input."""
    c_in = input_shape[0]
    return [
        nn.Sequential(_conv3x3(c_in, 16), nn.BatchNorm2d(16), nn.ReLU()),
        _stage(16, 16, 2, stride=1),
        _stage(16, 32, 2, stride=2),
        _stage(32, 64, 3, stride=2),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_classes)),
    ]
