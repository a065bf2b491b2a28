"""SGD and Adam steps against a numpy (float64) implementation of the course formulas."""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn


def _setup(device, seed=0):
    """A Linear + ReLU + Linear model, data, and a function returning numpy gradients."""
    np.random.seed(seed)
    model = nn.Sequential(nn.Linear(4, 5, device=device), nn.ReLU(), nn.Linear(5, 3, device=device))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    return model, x, y


def _grads(model, x, y, device):
    loss = nn.SoftmaxLoss()(model(ndl.Tensor(x, device=device)),
                            ndl.Tensor(y, device=device, requires_grad=False))
    loss.backward()
    return [p.grad.numpy().astype(np.float64) for p in model.parameters()]


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_sgd_matches_numpy(device, momentum, wd):
    model, x, y = _setup(device)
    opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    params = [p.numpy().astype(np.float64) for p in model.parameters()]
    u = [np.zeros_like(p) for p in params]
    for _ in range(3):
        opt.reset_grad()
        grads = _grads(model, x, y, device)
        # the reference starts from needle's current parameters, so only one step's rounding
        # enters each comparison
        params = [p.numpy().astype(np.float64) for p in model.parameters()]
        opt.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + wd * p
            u[i] = momentum * u[i] + (1 - momentum) * g
            expected = p - 0.1 * u[i]
            np.testing.assert_allclose(model.parameters()[i].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_matches_numpy(device, wd):
    model, x, y = _setup(device, seed=1)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    opt = ndl.optim.Adam(model.parameters(), lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)
    n = len(model.parameters())
    m = [0.0] * n
    v = [0.0] * n
    for t in range(1, 5):
        opt.reset_grad()
        grads = _grads(model, x, y, device)
        params = [p.numpy().astype(np.float64) for p in model.parameters()]
        opt.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + wd * p
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            expected = p - lr * m_hat / (np.sqrt(v_hat) + eps)
            np.testing.assert_allclose(model.parameters()[i].numpy(), expected, rtol=1e-4, atol=1e-6)
    assert opt.t == 4


def test_optimizers_reduce_loss(device):
    for make in (lambda ps: ndl.optim.SGD(ps, lr=0.5, momentum=0.9),
                 lambda ps: ndl.optim.Adam(ps, lr=0.05)):
        _, x, y = _setup(device, seed=2)
        np.random.seed(2)
        model = nn.Sequential(nn.Linear(4, 32, device=device), nn.Tanh(), nn.Linear(32, 3, device=device))
        opt = make(model.parameters())
        losses = []
        for _ in range(30):
            opt.reset_grad()
            loss = nn.SoftmaxLoss()(model(ndl.Tensor(x, device=device)),
                                    ndl.Tensor(y, device=device, requires_grad=False))
            loss.backward()
            opt.step()
            losses.append(float(loss.numpy()))
        assert losses[-1] < 0.5 * losses[0]


def test_params_without_grad_are_skipped(device):
    a = nn.Parameter(ndl.Tensor(np.ones(3), device=device))
    b = nn.Parameter(ndl.Tensor(np.ones(3), device=device))
    opt = ndl.optim.Adam([a, b], lr=0.1)
    (a * 2).sum().backward()
    opt.step()
    np.testing.assert_array_equal(b.numpy(), np.ones(3))
    assert np.all(a.numpy() < 1)
    opt.reset_grad()
    assert a.grad is None and b.grad is None


def test_step_keeps_parameter_objects_and_builds_no_graph(device):
    model, x, y = _setup(device)
    before = model.parameters()
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)
    _grads(model, x, y, device)
    opt.step()
    after = model.parameters()
    assert all(p is q for p, q in zip(before, after))
    assert all(p.is_leaf() and p.requires_grad and p.dtype == "float32" for p in after)


def test_clip_grad_norm(device):
    a = nn.Parameter(ndl.Tensor(np.array([3.0, 4.0]), device=device))
    (a * ndl.Tensor(np.array([3.0, 4.0]), device=device, requires_grad=False)).sum().backward()
    opt = ndl.optim.SGD([a], lr=1.0)
    opt.clip_grad_norm(max_norm=1.0)
    np.testing.assert_allclose(a.grad.numpy(), [0.6, 0.8], rtol=1e-5)
