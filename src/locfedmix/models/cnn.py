"""Small LeNet-style CNN (as in SplitFed-type papers) split into four cuttable blocks.

Each conv block pools before its ReLU. Max-pooling and ReLU commute exactly (max of relu = relu of max), and so do
their gradients: both send a window's gradient to its first largest input when that input is positive, nowhere
otherwise. The ReLU then runs on a quarter of the values, forward and backward.
"""

from torch import nn

# Two 2x2 max-pools halve H and W twice, so each side must be at least 4 to keep a non-empty map.
CNN_MIN_SIDE = 4


def build_cnn_blocks(input_shape: tuple[int, int, int], n_classes: int) -> list[nn.Module]:
    """Return [conv1, conv2, fc1, fc2] for a `(C, H, W)` input; pools floor-divide H, W by 4."""
    c_in, h, w = input_shape
    flat = 64 * (h // 4) * (w // 4)
    return [
        nn.Sequential(nn.Conv2d(c_in, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU()),
        nn.Linear(128, n_classes),
    ]
