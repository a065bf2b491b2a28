"""A harder quantization task built from the shipped MNIST CNN: outlier channels.

``outlier_channel_cnn(model, factor)`` returns a copy of an :class:`~needle.nn.zoo.MnistCNN`
that computes the same function in float but whose activations have a few channels
``factor`` times wider than the rest, as trained networks often do (Nagel et al. 2019, 2021).
The rewrite is exact because ReLU is positively homogeneous: for a Conv -> BatchNorm -> ReLU
block followed by a convolution,

    relu(k * bn(x))[c] = k * relu(bn(x))[c]   (k > 0),

so multiplying BatchNorm's gamma and beta of channel c by k and dividing the next
convolution's input-channel-c weights by k leaves the output unchanged. After the rewrite a
per-tensor activation range must cover the wide channels, which leaves few levels for the
others, and a per-tensor weight range of the next layer is set by the channels it did not
shrink: the settings a quantizer chooses (granularity, observer, bits) now visibly matter.
"""
import numpy as np

from ..autograd import Tensor
from ..nn.zoo import MnistCNN
from .fuse import clone_module

__all__ = ["OUTLIER_CHANNELS", "outlier_channel_cnn"]

#: (block index in MnistCNN.model, output channels made wide): the first block's output
#: feeds block 1; block 3's output feeds block 4
OUTLIER_CHANNELS = ((0, (2, 5)), (3, (1, 7, 20)))


def _scale_param(t, index, factor, axis=0):
    a = t.numpy().copy()
    sl = [slice(None)] * a.ndim
    sl[axis] = list(index)
    a[tuple(sl)] *= factor
    t.data = Tensor(a, device=t.device, dtype=t.dtype, requires_grad=False)


def outlier_channel_cnn(model, factor=16.0, channels=OUTLIER_CHANNELS):
    """A copy of ``model`` (an ``MnistCNN``) with outlier channels and the same float output.

    factor: how much wider the chosen channels become (> 0). channels: pairs (block, output
    channels) with block an index of a ConvBN of ``model.model`` that is followed directly by
    another ConvBN (0 -> 1, 3 -> 4 in MnistCNN). Returns the copy in eval mode.
    """
    if not isinstance(model, MnistCNN):
        raise TypeError(f"outlier_channel_cnn needs an MnistCNN, got {type(model).__name__}")
    if not factor > 0 or not np.isfinite(factor):
        raise ValueError(f"factor must be a finite positive number, got {factor!r}")
    copy = clone_module(model).eval()
    blocks = copy.model.modules
    for block, chans in channels:
        if block not in (0, 3):
            raise ValueError(f"block {block} is not followed by a ConvBN in MnistCNN; use 0 or 3")
        bn, nxt = blocks[block].bn, blocks[block + 1].conv
        bad = [c for c in chans if not 0 <= c < bn.dim]
        if bad:
            raise ValueError(f"channels {bad} out of range for block {block} ({bn.dim} channels)")
        _scale_param(bn.weight, chans, factor)
        _scale_param(bn.bias, chans, factor)
        _scale_param(nxt.weight, chans, 1.0 / factor, axis=2)   # (K, K, C_in, C_out)
    return copy
