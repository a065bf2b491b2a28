"""The course's training and evaluation helpers (10-414/714 ``apps/simple_ml.py``).

hw1: ``parse_mnist``, ``softmax_loss``, ``nn_epoch``; hw4: ``epoch_general_cifar10``,
``train_cifar10``, ``evaluate_cifar10``, ``epoch_general_ptb``, ``train_ptb``,
``evaluate_ptb``; and ``loss_err``. Every epoch function returns ``(accuracy, mean loss)``
over the samples it saw, and (as in the course) reseeds numpy's global RNG with 4 first.
The PTB helpers take the (nbatch, batch_size) array of ``needle.data.batchify`` and walk
it in windows of ``seq_len`` (truncated backpropagation through time: the hidden state is
carried from window to window but detached).
"""
import numpy as np

import needle as ndl
import needle.nn as nn
from needle.data.mnist import read_idx_gz
from needle.data.ptb import get_batch
from needle.train import train_epoch, evaluate, _progress

__all__ = ["parse_mnist", "softmax_loss", "nn_epoch", "epoch_general_cifar10", "train_cifar10",
           "evaluate_cifar10", "epoch_general_ptb", "train_ptb", "evaluate_ptb", "loss_err",
           "detach_state"]


# ---- hw1 ---------------------------------------------------------------------------------------
def parse_mnist(image_filename, label_filename):
    """MNIST idx.gz files -> (X (n, 784) float32 in [0, 1], y (n,) uint8)."""
    images = read_idx_gz(image_filename)
    labels = read_idx_gz(label_filename)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"parse_mnist: {images.shape[0]} images but {labels.shape[0]} labels")
    X = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    return X, labels.astype(np.uint8)


def softmax_loss(Z, y_one_hot):
    """Mean softmax cross-entropy of logits Z (n, k) and one-hot labels (n, k) (Tensors)."""
    n = Z.shape[0]
    return ndl.ops.summation(ndl.ops.logsumexp(Z, axes=(1,)) - ndl.ops.summation(Z * y_one_hot, axes=(1,))) / n


def nn_epoch(X, y, W1, W2, lr=0.1, batch=100):
    """One epoch of plain SGD, in order, on logits = ReLU(X W1) W2 (no biases).

    X (n, d) float32 numpy, y (n,) labels, W1 (d, h) and W2 (h, k) Tensors; returns the
    updated (W1, W2) as new Tensors."""
    k = W2.shape[1]
    for start in range(0, X.shape[0], batch):
        xb = ndl.Tensor(X[start:start + batch], device=W1.device)
        yb = np.asarray(y[start:start + batch]).astype(np.int64)
        onehot = np.zeros((yb.shape[0], k), dtype=np.float32)
        onehot[np.arange(yb.shape[0]), yb] = 1
        loss = softmax_loss(ndl.ops.relu(xb @ W1) @ W2, ndl.Tensor(onehot, device=W1.device))
        loss.backward()
        W1 = ndl.Tensor(W1.realize_cached_data() - W1.grad.realize_cached_data() * lr)
        W2 = ndl.Tensor(W2.realize_cached_data() - W2.grad.realize_cached_data() * lr)
    return W1, W2


# ---- CIFAR-10 ------------------------------------------------------------------------------------
def epoch_general_cifar10(dataloader, model, loss_fn=nn.SoftmaxLoss(), opt=None):
    """One pass over ``dataloader``: training (with ``opt``) or evaluation (without)."""
    np.random.seed(4)
    if opt is not None:
        return train_epoch(model, dataloader, opt, loss_fn, progress=False)
    return evaluate(model, dataloader, loss_fn)


def train_cifar10(model, dataloader, n_epochs=1, optimizer=ndl.optim.Adam, lr=0.001,
                  weight_decay=0.001, loss_fn=nn.SoftmaxLoss):
    """``n_epochs`` epochs with ``optimizer(model.parameters(), lr=, weight_decay=)``; the last
    epoch's (accuracy, loss)."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    result = None
    for _ in range(n_epochs):
        result = epoch_general_cifar10(dataloader, model, loss_fn(), opt)
    return result


def evaluate_cifar10(model, dataloader, loss_fn=nn.SoftmaxLoss):
    np.random.seed(4)
    return epoch_general_cifar10(dataloader, model, loss_fn())


# ---- Penn Treebank (and any batchified token stream) -------------------------------------------
def detach_state(h):
    """The hidden state cut from its graph: a Tensor, a tuple of Tensors, or None."""
    if h is None:
        return None
    if isinstance(h, (tuple, list)):
        return tuple(detach_state(x) for x in h)
    return h.detach()


def epoch_general_ptb(data, model, seq_len=40, loss_fn=nn.SoftmaxLoss(), opt=None, clip=None,
                      device=None, dtype="float32", progress=False):
    """One pass over ``data`` (nbatch, batch_size) in windows of ``seq_len`` steps.

    With ``opt`` the model trains (``clip``: the largest joint gradient norm); without it the
    model is evaluated. ``progress=True`` shows a tqdm bar. Returns (accuracy, mean loss)
    over all predicted tokens; exp(mean loss) is the perplexity.
    """
    np.random.seed(4)
    if data.shape[0] < 2:
        raise ValueError(f"epoch_general_ptb: data needs at least 2 rows, got shape {data.shape}")
    model.train() if opt is not None else model.eval()
    correct = total = 0
    loss_sum = 0.0
    h = None
    starts = range(0, data.shape[0] - 1, seq_len)
    bar = _progress(starts, progress, desc="train" if opt is not None else "eval", leave=False)
    for i in bar:
        X, y = get_batch(data, i, seq_len, device=device, dtype=dtype)
        logits, h = model(X, h)
        h = detach_state(h)
        loss = loss_fn(logits, y)
        if opt is not None:
            opt.reset_grad()
            loss.backward()
            if clip is not None:
                opt.clip_grad_norm(clip)
            opt.step()
        n = y.shape[0]
        correct += int((logits.numpy().argmax(axis=1) == y.numpy()).sum())
        loss_sum += float(loss.numpy()) * n
        total += n
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum / total:.4f}")
    return correct / total, loss_sum / total


def train_ptb(model, data, seq_len=40, n_epochs=1, optimizer=ndl.optim.SGD, lr=4.0,
              weight_decay=0.0, loss_fn=nn.SoftmaxLoss, clip=None, device=None, dtype="float32",
              progress=False):
    """``n_epochs`` epochs of ``epoch_general_ptb`` with ``optimizer(model.parameters(), lr=,
    weight_decay=)``; the last epoch's (accuracy, loss)."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    result = None
    for _ in range(n_epochs):
        result = epoch_general_ptb(data, model, seq_len, loss_fn(), opt, clip, device, dtype,
                                   progress=progress)
    return result


def evaluate_ptb(model, data, seq_len=40, loss_fn=nn.SoftmaxLoss, device=None, dtype="float32",
                 progress=False):
    np.random.seed(4)
    return epoch_general_ptb(data, model, seq_len, loss_fn(), None, device=device, dtype=dtype,
                             progress=progress)


def loss_err(h, y):
    """(softmax loss, error rate) of logits h (n, k) Tensor and labels y (n,) numpy."""
    y_one_hot = np.zeros((y.shape[0], h.shape[-1]), dtype=np.float32)
    y_one_hot[np.arange(y.size), y] = 1
    return (softmax_loss(h, ndl.Tensor(y_one_hot, device=h.device)).numpy(),
            np.mean(h.numpy().argmax(axis=1) != y))
