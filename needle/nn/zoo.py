"""Model zoo: MnistCNN (the kit's default model), ResNet9 (10-414/714 hw4, CIFAR-10) and the
hw2 MLP ResNet (``ResidualBlock``, ``MLPResNet``, on flat (N, dim) inputs).

Both models are built from ``ConvBN`` blocks, a ``Sequential`` of Conv -> BatchNorm2d ->
ReLU, the pattern the quantizer folds into one integer convolution with a fused ReLU.
Inputs are NCHW float32 Tensors; outputs are (N, 10) logits.
"""
from pathlib import Path

from .nn_basic import Module, Sequential, Residual, Flatten, Linear, ReLU, BatchNorm1d, Dropout
from .nn_conv import Conv, BatchNorm2d

__all__ = ["ConvBN", "MnistCNN", "ResNet9", "ResidualBlock", "MLPResNet", "DEFAULT_CHECKPOINT",
           "pretrained_mnist_cnn"]

# the shipped float checkpoint (see checkpoints/README.md)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "mnist_cnn.safetensors"


class ConvBN(Sequential):
    """Conv(k x k, stride, 'same' padding k // 2) -> BatchNorm2d -> ReLU, on NCHW input.

    A ``Sequential`` so that tools walking ``Sequential.modules`` see the three layers in
    order; ``conv``, ``bn`` and ``relu`` name them.
    (N, a, H, W) -> (N, b, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, a, b, k, stride=1, device=None, dtype="float32"):
        super().__init__(
            Conv(a, b, k, stride=stride, device=device, dtype=dtype),
            BatchNorm2d(b, device=device, dtype=dtype),
            ReLU(),
        )

    @property
    def conv(self):
        return self.modules[0]

    @property
    def bn(self):
        return self.modules[1]

    @property
    def relu(self):
        return self.modules[2]


class MnistCNN(Module):
    """The kit's default MNIST classifier: (N, 1, 28, 28) -> (N, 10) logits.

    Small and quantization-friendly: Conv+BN+ReLU blocks, stride-2 convolutions instead of
    pooling, one residual block (so the quantized residual add is exercised), Flatten and a
    single Linear layer. Shapes (C x H x W):

        1x28x28 -ConvBN(3, s1)-> 8x28x28 -ConvBN(3, s2)-> 16x14x14
        -Residual(ConvBN, ConvBN)-> 16x14x14 -ConvBN(3, s2)-> 32x7x7
        -ConvBN(3, s2)-> 32x4x4 -Flatten-> 512 -Linear-> 10

    25,146 parameters (~100 KB as float32).
    """

    def __init__(self, device=None, dtype="float32"):
        super().__init__()
        self.model = Sequential(
            ConvBN(1, 8, 3, 1, device=device, dtype=dtype),
            ConvBN(8, 16, 3, 2, device=device, dtype=dtype),
            Residual(Sequential(
                ConvBN(16, 16, 3, 1, device=device, dtype=dtype),
                ConvBN(16, 16, 3, 1, device=device, dtype=dtype),
            )),
            ConvBN(16, 32, 3, 2, device=device, dtype=dtype),
            ConvBN(32, 32, 3, 2, device=device, dtype=dtype),
            Flatten(),
            Linear(32 * 4 * 4, 10, device=device, dtype=dtype),
        )

    def forward(self, x):
        return self.model(x)


class ResNet9(Module):
    """The 10-414/714 hw4 ResNet-9 for CIFAR-10: (N, 3, 32, 32) -> (N, 10) logits.

        3x32x32 -ConvBN(7, s4)-> 16x8x8 -ConvBN(3, s2)-> 32x4x4 -Residual-> 32x4x4
        -ConvBN(3, s2)-> 64x2x2 -ConvBN(3, s2)-> 128x1x1 -Residual-> 128x1x1
        -Flatten-> 128 -Linear-> 128 -ReLU-> -Linear-> 10
    """

    def __init__(self, device=None, dtype="float32"):
        super().__init__()

        def block(a, b, k, s):
            return ConvBN(a, b, k, s, device=device, dtype=dtype)

        self.model = Sequential(
            block(3, 16, 7, 4),
            block(16, 32, 3, 2),
            Residual(Sequential(block(32, 32, 3, 1), block(32, 32, 3, 1))),
            block(32, 64, 3, 2),
            block(64, 128, 3, 2),
            Residual(Sequential(block(128, 128, 3, 1), block(128, 128, 3, 1))),
            Flatten(),
            Linear(128, 128, device=device, dtype=dtype),
            ReLU(),
            Linear(128, 10, device=device, dtype=dtype),
        )

    def forward(self, x):
        return self.model(x)


def ResidualBlock(dim, hidden_dim, norm=BatchNorm1d, drop_prob=0.1):
    """The hw2 residual block on (N, dim): ReLU(x + norm(Linear(Dropout(ReLU(norm(Linear(x))))))),
    hidden width ``hidden_dim``; ``norm`` is a module class called with the feature count."""
    return Sequential(
        Residual(Sequential(
            Linear(dim, hidden_dim), norm(hidden_dim), ReLU(), Dropout(drop_prob),
            Linear(hidden_dim, dim), norm(dim),
        )),
        ReLU(),
    )


def MLPResNet(dim, hidden_dim=100, num_blocks=3, num_classes=10, norm=BatchNorm1d, drop_prob=0.1):
    """The hw2 MLP ResNet: (N, dim) -> Linear -> ReLU -> ``num_blocks`` x
    ``ResidualBlock(hidden_dim, hidden_dim // 2)`` -> Linear -> (N, num_classes) logits."""
    return Sequential(
        Linear(dim, hidden_dim), ReLU(),
        *[ResidualBlock(hidden_dim, hidden_dim // 2, norm, drop_prob) for _ in range(num_blocks)],
        Linear(hidden_dim, num_classes),
    )


def pretrained_mnist_cnn(path=None, device=None):
    """Return an ``MnistCNN`` in eval mode with the shipped weights (or those at ``path``)."""
    from ..serialization import load_checkpoint  # deferred: serialization imports nn lazily

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (train one: python -m needle.train)")
    model = MnistCNN(device=device)
    model.load_state_dict(load_checkpoint(path, device=device))
    model.eval()
    return model
