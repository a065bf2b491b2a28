"""The hw2 ``apps/mlp_resnet.py`` of 10-414/714: the MLP ResNet and its MNIST training loop.

``ResidualBlock`` and ``MLPResNet`` live in ``needle.nn.zoo``; ``epoch`` and ``train_mnist``
follow the handout's contract (seeded with ``np.random.seed(4)``, returning error rates, not
accuracies). Course code imports them through a one-line shim ``apps/mlp_resnet.py``::

    from needle.apps.mlp_resnet import *
"""
import os

import numpy as np

import needle as ndl
import needle.nn as nn
from needle.nn.zoo import MLPResNet, ResidualBlock
from needle.train import evaluate, train_epoch

__all__ = ["ResidualBlock", "MLPResNet", "epoch", "train_mnist"]


def epoch(dataloader, model, opt=None):
    """One pass over ``dataloader`` (batches of flat (B, 784) images and (B,) labels): trains
    with ``opt`` when given, else evaluates. Returns ``(error rate, mean softmax loss)``."""
    np.random.seed(4)
    if opt is None:
        acc, loss = evaluate(model, dataloader, nn.SoftmaxLoss(), progress=False)
    else:
        acc, loss = train_epoch(model, dataloader, opt, nn.SoftmaxLoss(), progress=False)
    return 1.0 - acc, loss


def train_mnist(batch_size=100, epochs=10, optimizer=ndl.optim.Adam, lr=0.001, weight_decay=0.001,
                hidden_dim=100, data_dir="data"):
    """Train ``MLPResNet(784, hidden_dim)`` on the MNIST idx files in ``data_dir`` and return
    ``(train error, train loss, test error, test loss)`` of the last epoch."""
    np.random.seed(4)
    files = {s: [os.path.join(data_dir, f"{s}-{k}-idx{d}-ubyte.gz") for k, d in (("images", 3), ("labels", 1))]
             for s in ("train", "t10k")}
    train_set = ndl.data.MNISTDataset(*files["train"])
    test_set = ndl.data.MNISTDataset(*files["t10k"])
    train_loader = ndl.data.DataLoader(train_set, batch_size, shuffle=True)
    test_loader = ndl.data.DataLoader(test_set, batch_size)
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt)
    test_err, test_loss = epoch(test_loader, model)
    return train_err, train_loss, test_err, test_loss
