"""PyTorch int8 twins of needle's zoo models, for end-to-end comparisons (speed only).

``MnistCNN`` and ``ResNet9`` are rebuilt layer for layer in torch.nn (Conv k x k with k // 2
padding -> BatchNorm2d -> ReLU blocks, residual adds, Flatten, Linear), then quantized the way
a PyTorch user would: eager mode, Conv+BN+ReLU fused (BN folded), the engine's default qconfig
(per-channel int8 weights, uint8 activations), one calibration batch, channels_last input.
Weights are random: this measures speed, not accuracy.
"""
import numpy as np

INPUTS = {"MnistCNN": (1, 28, 28), "ResNet9": (3, 32, 32)}


def _layers(torch, name):
    nn = torch.nn

    def block(a, b, k, s):
        return nn.Sequential(nn.Conv2d(a, b, k, s, k // 2), nn.BatchNorm2d(b), nn.ReLU())

    class Residual(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body
            self.add = torch.ao.nn.quantized.FloatFunctional()

        def forward(self, x):
            return self.add.add(self.body(x), x)

    if name == "MnistCNN":
        return [block(1, 8, 3, 1), block(8, 16, 3, 2),
                Residual(nn.Sequential(block(16, 16, 3, 1), block(16, 16, 3, 1))),
                block(16, 32, 3, 2), block(32, 32, 3, 2), nn.Flatten(), nn.Linear(512, 10)]
    if name == "ResNet9":
        return [block(3, 16, 7, 4), block(16, 32, 3, 2),
                Residual(nn.Sequential(block(32, 32, 3, 1), block(32, 32, 3, 1))),
                block(32, 64, 3, 2), block(64, 128, 3, 2),
                Residual(nn.Sequential(block(128, 128, 3, 1), block(128, 128, 3, 1))),
                nn.Flatten(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)]
    raise ValueError(f"unknown model {name!r}; expected one of {sorted(INPUTS)}")


def float_model(torch, name):
    """The float32 torch.nn twin of needle's zoo model ``name``, in eval mode."""
    nn = torch.nn
    q = torch.ao.quantization
    model = nn.Sequential(q.QuantStub(), *_layers(torch, name), q.DeQuantStub())
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics, so folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def int8_model(torch, name, engine, batch=8):
    """``name`` quantized for ``engine`` (e.g. "x86", "onednn", "fbgemm"): Conv+BN+ReLU fused,
    the engine's default qconfig, calibrated on one random channels_last batch."""
    q = torch.ao.quantization
    torch.backends.quantized.engine = engine
    model = float_model(torch, name)
    groups = [[f"{n}.0", f"{n}.1", f"{n}.2"] for n, m in model.named_modules()
              if isinstance(m, torch.nn.Sequential) and len(m) == 3
              and isinstance(m[0], torch.nn.Conv2d)]
    model = q.fuse_modules(model, groups)
    model.qconfig = q.get_default_qconfig(engine)
    prepared = q.prepare(model)
    with torch.no_grad():
        prepared(example(torch, name, batch))
    return q.convert(prepared)


def example(torch, name, batch):
    """A random float32 NCHW batch in channels_last memory format."""
    x = np.random.default_rng(0).random((batch, *INPUTS[name]), dtype=np.float32)
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
