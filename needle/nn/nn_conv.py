"""Convolutional layers."""
from needle.autograd import Tensor
from needle import ops
import needle.init as init
from .nn_basic import BatchNorm2d, Module, Parameter  # BatchNorm2d re-exported for convenience

__all__ = ["Conv"]


class Conv(Module):
    """2-D convolution of NCHW inputs with square kernels and "same" padding (K // 2).

    weight: (K, K, in_channels, out_channels), Kaiming-uniform with
    fan_in = in_channels * K * K; bias: (out_channels,), U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Output: (N, out_channels, ceil(H / stride), ceil(W / stride)) for odd K.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, bias=True,
                 device=None, dtype="float32"):
        super().__init__()
        if isinstance(kernel_size, tuple):
            kernel_size = kernel_size[0]
        if isinstance(stride, tuple):
            stride = stride[0]
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2
        fan_in = in_channels * kernel_size * kernel_size
        fan_out = out_channels * kernel_size * kernel_size
        self.weight = Parameter(init.kaiming_uniform(
            fan_in, fan_out, shape=(kernel_size, kernel_size, in_channels, out_channels),
            device=device, dtype=dtype, requires_grad=True))
        if bias:
            bound = 1.0 / fan_in ** 0.5
            self.bias = Parameter(init.rand(out_channels, low=-bound, high=bound, device=device,
                                            dtype=dtype, requires_grad=True))
        else:
            self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        if len(x.shape) != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv expects (N, {self.in_channels}, H, W) inputs, got shape {x.shape}")
        # NCHW -> NHWC is a view; the convolution's im2col copy reads it directly
        x = ops.permute(x, (0, 2, 3, 1))
        out = ops.conv(x, self.weight, stride=self.stride, padding=self.padding)
        if self.bias is not None:
            bias = ops.reshape(self.bias, (1, 1, 1, self.out_channels))
            out = out + ops.broadcast_to(bias, out.shape)
        return ops.permute(out, (0, 3, 1, 2))
