"""AlexNet-like CNN of the SGLR calibration experiment (Pal et al. 2021: Fashion-MNIST, 5 clients, one conv layer and
one max-pool on the client), sized for small grey or colour images, split into five cuttable blocks. Blocks pool
before their last ReLU, an exact reordering that runs the ReLU on a quarter of the values (models.cnn)."""

from torch import nn

# Three 2x2 max-pools divide H and W by 8.
ALEXNET_MIN_SIDE = 8


def build_alexnet_blocks(input_shape: tuple[int, int, int], n_classes: int) -> list[nn.Module]:
    """Return [conv1+pool, conv2+pool, conv3+conv4+pool, fc1, fc2]; the default cut keeps only block 1 on the client."""
    c_in, h, w = input_shape
    flat = 256 * (h // 8) * (w // 8)
    return [
        nn.Sequential(nn.Conv2d(c_in, 64, 5, padding=2), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1),
                      nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(flat, 512), nn.ReLU()),
        nn.Linear(512, n_classes),
    ]
