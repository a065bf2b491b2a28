"""The outlier-channel task (needle/quant/tasks.py): same float function, wider channels."""
import numpy as np
import pytest

import needle as ndl
from needle import nn
from needle.quant import QConfig, prepare, calibrate
from needle.quant.tasks import OUTLIER_CHANNELS, outlier_channel_cnn

from quant_helpers import images, mnist_cnn


@pytest.mark.parametrize("factor", [16.0, 3.0])
def test_outlier_model_keeps_the_float_function(factor):
    model = mnist_cnn(0)
    hard = outlier_channel_cnn(model, factor)
    x = ndl.Tensor(images(8)[0], device=model.model.modules[0].conv.weight.device)
    a, b = model(x).numpy(), hard(x).numpy()
    if factor == 16.0:            # a power of two: the rewrite is exact in float32
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # the chosen channels of the first block's output are `factor` times wider
    out0 = lambda m: m.model.modules[0](x).numpy()
    ratio = out0(hard).max(axis=(0, 2, 3)) / np.maximum(out0(model).max(axis=(0, 2, 3)), 1e-12)
    wide = list(OUTLIER_CHANNELS[0][1])
    np.testing.assert_allclose(ratio[wide], factor, rtol=1e-4)
    others = [c for c in range(8) if c not in wide and out0(model)[:, c].max() > 0]
    np.testing.assert_allclose(ratio[others], 1.0, rtol=1e-5)
    # the original is untouched
    np.testing.assert_array_equal(model(x).numpy(), a)


def test_outlier_model_widens_the_observed_range():
    model = mnist_cnn(1)
    calib = images(16, batches=1)
    ranges = []
    for m in (model, outlier_channel_cnn(model, 16.0)):
        p = prepare(m, QConfig())
        calibrate(p, calib, progress=False)
        ranges.append(p.observed_modules()[0][1].observer.range()[1])
    assert ranges[1] > 4 * ranges[0], ranges


def test_outlier_model_bad_inputs():
    with pytest.raises(TypeError, match="MnistCNN"):
        outlier_channel_cnn(nn.Sequential())
    with pytest.raises(ValueError, match="factor"):
        outlier_channel_cnn(mnist_cnn(0), -2.0)
    with pytest.raises(ValueError, match="block 2"):
        outlier_channel_cnn(mnist_cnn(0), 2.0, channels=((2, (0,)),))
    with pytest.raises(ValueError, match="out of range"):
        outlier_channel_cnn(mnist_cnn(0), 2.0, channels=((0, (8,)),))
