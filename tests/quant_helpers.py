"""Shared helpers of the needle.quant tests: small models with non-trivial BatchNorm state."""
import numpy as np

import needle as ndl
from needle import nn

DEV = ndl.cpu_numpy()


def tensor(a, device=DEV):
    return ndl.Tensor(np.asarray(a, np.float32), device=device, requires_grad=False)


def randomize_bn(model, seed=0):
    """Give every BatchNorm random gamma, beta and running statistics; eval mode."""
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm1d):  # BatchNorm2d too
            c, dev = m.dim, m.weight.device
            m.weight.data = tensor(rng.uniform(0.5, 1.5, c), dev)
            m.bias.data = tensor(rng.normal(0, 0.2, c), dev)
            m.running_mean = tensor(rng.normal(0, 0.3, c), dev)
            m.running_var = tensor(rng.uniform(0.3, 2.0, c), dev)
    model.eval()
    return model


def mnist_cnn(seed=0, device=DEV):
    np.random.seed(seed)
    return randomize_bn(nn.MnistCNN(device=device), seed)


def resnet9(seed=0, device=DEV):
    np.random.seed(seed)
    return randomize_bn(nn.ResNet9(device=device), seed)


def images(n, c=1, hw=28, seed=0, batches=1):
    """Random non-negative images shaped like the model input (list of numpy batches)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, (n, c, hw, hw)).astype(np.float32) for _ in range(batches)]
