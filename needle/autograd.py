"""Core of needle's automatic differentiation: values, ops and reverse-mode backward.

A :class:`Tensor` wraps an :class:`~needle.backend_ndarray.NDArray` (``cached_data``) and
remembers the :class:`Op` and input tensors that produced it. ``Tensor.backward()`` walks the
graph in reverse topological order and asks every op for the gradient of its inputs
(vector-Jacobian products), summing the contributions of every path into ``.grad``.

Execution is eager (``LAZY_MODE = False``): each op computes its output as soon as it is
called, and ops on tensors that do not require gradients return detached constants, so no
graph is kept for them.
"""
from typing import List, Optional, Tuple, Union

import numpy

from . import backend_ndarray as array_api
from .backend_ndarray import NDArray, default_device
from .backend_ndarray.ndarray import FLOAT_DTYPES, implicit_dtype

LAZY_MODE = False
TENSOR_COUNTER = 0


class Op:
    """An operator on values: ``compute`` on NDArrays, ``gradient`` on Tensors."""

    def __call__(self, *args):
        raise NotImplementedError()

    def compute(self, *args: Tuple[NDArray]):
        """Compute the output NDArray from the input NDArrays."""
        raise NotImplementedError()

    def gradient(self, out_grad: "Value", node: "Value") -> Union["Value", Tuple["Value"]]:
        """Return the gradient of the loss w.r.t. each input, given the gradient w.r.t.
        the output ``node`` (``out_grad``). One Tensor per input, as a tuple when there are
        several inputs."""
        raise NotImplementedError()

    def gradient_as_tuple(self, out_grad: "Value", node: "Value") -> Tuple["Value"]:
        output = self.gradient(out_grad, node)
        if isinstance(output, tuple):
            return output
        if isinstance(output, list):
            return tuple(output)
        return (output,)


class TensorOp(Op):
    """An op whose output is a single Tensor."""

    def __call__(self, *args):
        return Tensor.make_from_op(self, args)


class TensorTupleOp(Op):
    """An op whose output is a tuple of Tensors (:class:`TensorTuple`)."""

    def __call__(self, *args):
        return TensorTuple.make_from_op(self, args)


class Value:
    """A node of the computational graph."""

    op: Optional[Op]
    inputs: List["Value"]
    cached_data: NDArray
    requires_grad: bool

    def realize_cached_data(self):
        """Run the computation (if not done yet) and return the NDArray."""
        if self.cached_data is not None:
            return self.cached_data
        self.cached_data = self.op.compute(*[x.realize_cached_data() for x in self.inputs])
        return self.cached_data

    def is_leaf(self):
        return self.op is None

    def __del__(self):
        global TENSOR_COUNTER
        TENSOR_COUNTER -= 1

    def _init(self, op: Optional[Op], inputs: List["Value"], *, num_outputs: int = 1,
              cached_data=None, requires_grad: Optional[bool] = None):
        global TENSOR_COUNTER
        TENSOR_COUNTER += 1
        if requires_grad is None:
            requires_grad = any(x.requires_grad for x in inputs)
        self.op = op
        self.inputs = inputs
        self.num_outputs = num_outputs
        self.cached_data = cached_data
        self.requires_grad = requires_grad

    @classmethod
    def make_const(cls, data, *, requires_grad=False):
        value = cls.__new__(cls)
        value._init(None, [], cached_data=data, requires_grad=requires_grad)
        return value

    @classmethod
    def make_from_op(cls, op: Op, inputs: List["Value"]):
        value = cls.__new__(cls)
        value._init(op, list(inputs))
        if not LAZY_MODE:
            if not value.requires_grad:
                return value.detach()
            value.realize_cached_data()
        return value


class TensorTuple(Value):
    """A tuple of tensors produced by one op (e.g. ``split``)."""

    def __len__(self):
        return len(self.realize_cached_data())

    def __getitem__(self, index: int):
        from .ops import tuple_get_item
        return tuple_get_item(self, index)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def tuple(self):
        return tuple(x for x in self)

    def __repr__(self):
        return "needle.TensorTuple" + str(self.tuple())

    def __str__(self):
        return self.__repr__()

    def __add__(self, other):
        from .ops import make_tuple
        assert isinstance(other, TensorTuple)
        assert len(self) == len(other)
        return make_tuple(*[self[i] + other[i] for i in range(len(self))])

    def detach(self):
        return TensorTuple.make_const(self.realize_cached_data())


def _check_dtype(dtype):
    if dtype is None:
        return None
    return numpy.dtype(dtype).name


class Tensor(Value):
    """An n-dimensional array with automatic differentiation.

    Tensor(array, device=None, dtype=None, requires_grad=True)

    ``array`` may be a Tensor, an NDArray, a numpy array, a Python scalar or nested list.
    ``device`` defaults to the array's own device (Tensor/NDArray) or
    ``needle.default_device()``. ``dtype`` defaults to the dtype of a Tensor/NDArray input and
    to ``"float32"`` for everything else (numpy float64 input becomes float32, as on the
    course's compiled backend). Under ``NEEDLE_BACKEND=np`` (the course's numpy backend) a
    float32 numpy array stays float32 and all other data becomes float64, as numpy arrays do,
    on a device that holds float64 (``cpu_numpy()``). ``dtype="float64"`` works on
    ``cpu_numpy()`` only; other devices raise TypeError. Float tensors (float32, float64) are
    differentiable and their gradients keep their dtype. Integer tensors (``int8``, ``uint8``,
    ``int32``) hold data only: they never require gradients (``requires_grad`` is ignored).
    """

    grad: "Tensor"

    def __init__(self, array, *, device=None, dtype=None, requires_grad=True, **kwargs):
        dtype = _check_dtype(dtype)
        if isinstance(array, Tensor):
            array = array.realize_cached_data()
        if isinstance(array, NDArray):
            device = array.device if device is None else device
            dtype = array.dtype if dtype is None else dtype
            if device == array.device and dtype == array.dtype:
                cached_data = array
            elif dtype == array.dtype:
                cached_data = array.to(device)
            else:
                cached_data = array.astype(dtype).to(device)
        else:
            device = default_device() if device is None else device
            if dtype is None:
                dtype = implicit_dtype(numpy.asarray(array), device, floats_only=True,
                                       from_numpy=isinstance(array, (numpy.ndarray, numpy.generic)))
            cached_data = Tensor._array_from_numpy(array, device=device, dtype=dtype)
        if dtype not in FLOAT_DTYPES:
            requires_grad = False  # integer tensors are storage, never differentiated
        self._init(None, [], cached_data=cached_data, requires_grad=requires_grad)

    @staticmethod
    def _array_from_numpy(numpy_array, device, dtype):
        # NDArray does the conversion (float -> integer uses the astype rules)
        return array_api.array(numpy_array, device=device, dtype=dtype)

    @staticmethod
    def make_from_op(op: Op, inputs: List["Value"]):
        tensor = Tensor.__new__(Tensor)
        tensor._init(op, list(inputs))
        if not LAZY_MODE:
            if not tensor.requires_grad:
                return tensor.detach()
            tensor.realize_cached_data()
        return tensor

    @staticmethod
    def make_const(data, requires_grad=False):
        tensor = Tensor.__new__(Tensor)
        if isinstance(data, Tensor):
            data = data.realize_cached_data()
        tensor._init(None, [], cached_data=data, requires_grad=requires_grad)
        return tensor

    @property
    def data(self):
        """A detached tensor sharing this tensor's storage."""
        return self.detach()

    @data.setter
    def data(self, value):
        if not isinstance(value, Tensor):
            raise TypeError(f"data must be set to a Tensor, got {type(value).__name__}")
        if value.dtype != self.dtype:
            raise TypeError(f"data dtype {value.dtype} does not match tensor dtype {self.dtype}")
        self.cached_data = value.realize_cached_data()

    def detach(self):
        """A new leaf tensor with the same data and no history."""
        return Tensor.make_const(self.realize_cached_data())

    @property
    def shape(self):
        return tuple(self.realize_cached_data().shape)

    @property
    def dtype(self):
        return self.realize_cached_data().dtype

    @property
    def device(self):
        return self.realize_cached_data().device

    @property
    def ndim(self):
        return len(self.shape)

    def numpy(self):
        """A numpy copy of the data."""
        data = self.realize_cached_data()
        if isinstance(data, numpy.ndarray):
            return data
        return data.numpy()

    def to(self, device):
        """A copy of this (detached) tensor on ``device``."""
        return Tensor(self.realize_cached_data(), device=device,
                      requires_grad=self.requires_grad)

    def astype(self, dtype):
        """A detached copy converted to ``dtype`` (NDArray astype rules)."""
        return Tensor(self.realize_cached_data(), dtype=dtype, requires_grad=False)

    def backward(self, out_grad=None):
        """Compute the gradient of this tensor w.r.t. every tensor in its graph.

        ``out_grad`` defaults to ones of this tensor's shape. Sets ``.grad`` on every node
        of the graph (the sum over all paths); a new call replaces earlier gradients.
        """
        if out_grad is None:
            from . import init
            out_grad = init.ones(*self.shape, dtype=self.dtype, device=self.device)
        elif not isinstance(out_grad, Tensor):
            out_grad = Tensor(out_grad, device=self.device, dtype=self.dtype, requires_grad=False)
        else:
            out_grad = _grad_in_dtype(out_grad, self.dtype)
        if tuple(out_grad.shape) != tuple(self.shape):
            raise ValueError(f"out_grad has shape {out_grad.shape}, expected {self.shape}")
        compute_gradient_of_variables(self, out_grad)

    def __repr__(self):
        return "needle.Tensor(" + str(self.realize_cached_data()) + ")"

    def __str__(self):
        return self.realize_cached_data().__str__()

    # ---- operators: Tensor (op) Tensor broadcasts numpy-style, Tensor (op) scalar ----
    def __add__(self, other):
        from . import ops
        if isinstance(other, Tensor):
            return ops.add(self, other)
        return ops.add_scalar(self, other)

    def __mul__(self, other):
        from . import ops
        if isinstance(other, Tensor):
            return ops.multiply(self, other)
        return ops.mul_scalar(self, other)

    def __pow__(self, other):
        from . import ops
        if isinstance(other, Tensor):
            return ops.power(self, other)
        return ops.power_scalar(self, other)

    def __rpow__(self, other):
        from . import ops
        if isinstance(other, Tensor):
            return ops.power(other, self)
        # c ** x = exp(x * log c) for c > 0
        if other <= 0:
            raise ValueError(f"scalar ** Tensor needs a positive base, got {other}")
        return ops.exp(ops.mul_scalar(self, float(numpy.log(other))))

    def __sub__(self, other):
        from . import ops
        if isinstance(other, Tensor):
            return ops.add(self, ops.negate(other))
        return ops.add_scalar(self, -other)

    def __rsub__(self, other):
        from . import ops
        if isinstance(other, Tensor):
            return ops.add(other, ops.negate(self))
        return ops.add_scalar(ops.negate(self), other)

    def __truediv__(self, other):
        from . import ops
        if isinstance(other, Tensor):
            return ops.divide(self, other)
        return ops.divide_scalar(self, other)

    def __rtruediv__(self, other):
        from . import ops
        if isinstance(other, Tensor):
            return ops.divide(other, self)
        return ops.mul_scalar(ops.power_scalar(self, -1), other)

    def __matmul__(self, other):
        from . import ops
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        from . import ops
        return ops.matmul(other, self)

    def matmul(self, other):
        from . import ops
        return ops.matmul(self, other)

    def sum(self, axes=None):
        from . import ops
        return ops.summation(self, axes)

    def max(self, axes=None, keepdims=False):
        from . import ops
        return ops.max(self, axes, keepdims=keepdims)

    def broadcast_to(self, shape):
        from . import ops
        return ops.broadcast_to(self, shape)

    def reshape(self, shape):
        from . import ops
        return ops.reshape(self, shape)

    def __neg__(self):
        from . import ops
        return ops.negate(self)

    def transpose(self, axes=None):
        from . import ops
        return ops.transpose(self, axes)

    def permute(self, axes):
        from . import ops
        return ops.permute(self, axes)

    def exp(self):
        from . import ops
        return ops.exp(self)

    def log(self):
        from . import ops
        return ops.log(self)

    def relu(self):
        from . import ops
        return ops.relu(self)

    __radd__ = __add__
    __rmul__ = __mul__


def compute_gradient_of_variables(output_tensor, out_grad):
    """Reverse-mode differentiation: set ``.grad`` of every node reachable from
    ``output_tensor``, given the gradient ``out_grad`` of the output."""
    node_to_output_grads_list = {output_tensor: [out_grad]}
    reverse_topo_order = list(reversed(find_topo_sort([output_tensor])))
    for node in reverse_topo_order:
        grads = node_to_output_grads_list.pop(node, None)
        if grads is None:
            continue
        node.grad = sum_node_list(grads)
        if isinstance(node, Tensor):
            node.grad = _grad_in_dtype(node.grad, node.dtype)
        if node.op is None:
            continue
        in_grads = node.op.gradient_as_tuple(node.grad, node)
        for inp, grad in zip(node.inputs, in_grads):
            if grad is None or not inp.requires_grad:
                continue
            node_to_output_grads_list.setdefault(inp, []).append(grad)


def _grad_in_dtype(grad, dtype):
    """``grad`` in the float ``dtype`` of the tensor it belongs to: a float32 input of an op
    that promoted to float64 gets a float32 gradient (as in PyTorch)."""
    if grad.dtype == dtype or dtype not in FLOAT_DTYPES:
        return grad
    return Tensor(grad.realize_cached_data(), dtype=dtype, requires_grad=False)


def find_topo_sort(node_list: List[Value]) -> List[Value]:
    """Nodes reachable from ``node_list`` in topological order (inputs first).

    Iterative post-order depth-first search, so deep graphs do not hit Python's
    recursion limit.
    """
    visited = set()
    topo_order = []
    for root in node_list:
        if id(root) in visited:
            continue
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                topo_order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for inp in reversed(node.inputs):
                if id(inp) not in visited:
                    stack.append((inp, False))
    return topo_order


def sum_node_list(node_list):
    """Sum a list of gradients without creating a redundant zero node."""
    total = node_list[0]
    for node in node_list[1:]:
        total = total + node
    return total
