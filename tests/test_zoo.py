"""needle.nn.zoo: MnistCNN and ResNet9 shapes, parameter counts, structure, train/eval."""
import numpy as np
import pytest

import needle as ndl
from needle import nn
from needle.nn.zoo import ConvBN, MnistCNN, ResNet9


def _n_params(model):
    return int(sum(np.prod(p.shape) for p in model.parameters()))


def _conv_bn(a, b, k):
    """Parameters of ConvBN(a, b, k): conv weight + conv bias + BN weight and bias."""
    return a * b * k * k + b + 2 * b


def test_mnist_cnn_shapes_and_parameter_count():
    np.random.seed(0)
    model = MnistCNN()
    x = ndl.Tensor(np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32))
    out = model(x)
    assert out.shape == (3, 10)
    assert np.all(np.isfinite(out.numpy()))
    expected = (_conv_bn(1, 8, 3) + _conv_bn(8, 16, 3) + 2 * _conv_bn(16, 16, 3)
                + _conv_bn(16, 32, 3) + _conv_bn(32, 32, 3) + 32 * 4 * 4 * 10 + 10)
    assert expected == 25146
    assert _n_params(model) == expected
    # small enough to ship: float32 weights well under 200 KB
    assert 4 * _n_params(model) < 200_000


def test_resnet9_shapes_and_parameter_count():
    np.random.seed(0)
    model = ResNet9()
    x = ndl.Tensor(np.random.default_rng(1).random((2, 3, 32, 32)).astype(np.float32))
    assert model(x).shape == (2, 10)
    expected = (_conv_bn(3, 16, 7) + _conv_bn(16, 32, 3) + 2 * _conv_bn(32, 32, 3)
                + _conv_bn(32, 64, 3) + _conv_bn(64, 128, 3) + 2 * _conv_bn(128, 128, 3)
                + 128 * 128 + 128 + 128 * 10 + 10)
    assert expected == 431946
    assert _n_params(model) == expected


@pytest.mark.parametrize("size, stride, out", [(28, 1, 28), (28, 2, 14), (14, 2, 7), (7, 2, 4)])
def test_conv_bn_block(size, stride, out):
    block = ConvBN(2, 5, 3, stride)
    assert isinstance(block, nn.Sequential)
    assert isinstance(block.conv, nn.Conv) and isinstance(block.bn, nn.BatchNorm2d)
    assert isinstance(block.relu, nn.ReLU)
    assert block.conv.stride == stride
    y = block(ndl.Tensor(np.random.default_rng(2).standard_normal((2, 2, size, size)).astype(np.float32)))
    assert y.shape == (2, 5, out, out)
    assert y.numpy().min() >= 0.0  # ends in ReLU


def test_mnist_cnn_structure_is_quantization_friendly():
    model = MnistCNN()
    layers = model.model.modules
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["ConvBN", "ConvBN", "Residual", "ConvBN", "ConvBN", "Flatten", "Linear"]
    assert [m.conv.stride for m in layers if isinstance(m, ConvBN)] == [1, 2, 2, 2]
    residual_body = layers[2].fn
    assert [type(m).__name__ for m in residual_body.modules] == ["ConvBN", "ConvBN"]


def test_train_and_eval_modes():
    np.random.seed(3)
    model = MnistCNN()
    rng = np.random.default_rng(3)
    xa = rng.random((4, 1, 28, 28)).astype(np.float32)
    xb = rng.random((4, 1, 28, 28)).astype(np.float32)
    model.eval()
    assert not model.training and not model.model.modules[0].bn.training
    # eval mode: BatchNorm uses running statistics, so a sample's output does not depend on
    # the rest of its batch
    alone = model(ndl.Tensor(xa)).numpy()
    together = model(ndl.Tensor(np.concatenate([xa, xb]))).numpy()[:4]
    np.testing.assert_allclose(alone, together, rtol=1e-4, atol=1e-5)
    model.train()
    assert model.training and model.model.modules[0].bn.training
    # train mode: batch statistics, so the other samples matter
    alone = model(ndl.Tensor(xa)).numpy()
    together = model(ndl.Tensor(np.concatenate([xa, xb]))).numpy()[:4]
    assert np.abs(alone - together).max() > 1e-3
