"""Optimizers: SGD with momentum and Adam, both with L2 weight decay (the course formulas).

Updates work on the parameters' NDArrays directly, so no graph is built.
"""
from typing import Iterable

from .autograd import Tensor

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer:
    def __init__(self, params: Iterable[Tensor]):
        self.params = list(params)

    def step(self):
        raise NotImplementedError()

    def reset_grad(self):
        for p in self.params:
            p.grad = None

    zero_grad = reset_grad

    def _grad(self, p, weight_decay):
        """The gradient with L2 weight decay added, as an NDArray (None when p has none)."""
        grad = getattr(p, "grad", None)
        if grad is None:
            return None
        g = grad.realize_cached_data()
        if weight_decay:
            g = g + p.realize_cached_data() * weight_decay
        return g

    def clip_grad_norm(self, max_norm=0.25):
        """Scale all gradients so that their joint L2 norm is at most ``max_norm``."""
        total = 0.0
        for p in self.params:
            if getattr(p, "grad", None) is not None:
                g = p.grad.realize_cached_data()
                total += float((g * g).sum().numpy())
        norm = total ** 0.5
        if norm > max_norm:
            factor = max_norm / (norm + 1e-6)
            for p in self.params:
                if getattr(p, "grad", None) is not None:
                    p.grad = Tensor.make_const(p.grad.realize_cached_data() * factor)


class SGD(Optimizer):
    """u = momentum * u + (1 - momentum) * (grad + weight_decay * p);  p = p - lr * u."""

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.u = {}

    def step(self):
        for p in self.params:
            g = self._grad(p, self.weight_decay)
            if g is None:
                continue
            if self.momentum:
                prev = self.u.get(p)
                u = g * (1 - self.momentum) if prev is None \
                    else prev * self.momentum + g * (1 - self.momentum)
                self.u[p] = u
            else:
                u = g
            p.cached_data = p.realize_cached_data() - u * self.lr


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay added to the gradient:

    g = grad + weight_decay * p;  m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g^2;  m_hat = m / (1 - beta1^t);  v_hat = v / (1 - beta2^t);
    p = p - lr * m_hat / (sqrt(v_hat) + eps), with t counting calls to ``step``.
    """

    def __init__(self, params, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0
        self.m = {}
        self.v = {}

    def step(self):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p in self.params:
            g = self._grad(p, self.weight_decay)
            if g is None:
                continue
            m, v = self.m.get(p), self.v.get(p)
            m = g * (1 - b1) if m is None else m * b1 + g * (1 - b1)
            v = (g * g) * (1 - b2) if v is None else v * b2 + (g * g) * (1 - b2)
            self.m[p], self.v[p] = m, v
            step = (m / c1) / ((v / c2) ** 0.5 + self.eps)
            p.cached_data = p.realize_cached_data() - step * self.lr
