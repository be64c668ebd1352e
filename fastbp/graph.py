"""Reverse-mode differentiation on a computation graph, as docs/background.md describes it (section 6).

The contract:

- Every value is a ``Node``. Source nodes are the inputs: ``Variable`` (parameters and data), and
  constants (plain numbers and arrays used in an expression, wrapped automatically). Every other node is the output
  of one operation, a *gate* (``Gate``) with ``forward(*input_values)`` and ``backward(upstream)``:
  downstream gradient = local gradient x upstream gradient, one per input.
- Building an expression records the graph: each node gets its creation index (a node is always created after
  its inputs, so creation order is a topological order) and joins the set ``S(u)`` of children of each input
  ``u``. The forward pass runs while the graph is built; ``forward`` runs it again over the nodes in
  topological order after the inputs changed.
- ``backward`` fills the gradient table in reverse creation order:
  ``df/df = 1`` and ``df/du = sum over v in S(u) of df/dv * dv/du``, where ``df/dv * dv/du`` is gate ``v``'s
  backward applied to ``df/dv`` (computed once per gate). A value used several times (``x * x``, or a node with
  several children) gets the sum of its contributions.

Values are float64 NumPy arrays (0-d for scalars) and NumPy broadcasting applies to scalars, vectors and matrices;
a gate un-broadcasts each downstream gradient (sums it over the broadcast axes) back to its input's shape.

Example (the worked example of that page, f(w, b) = 1/2 (sigma(w x + b) - y)^2 + 1/2 w^2)::

    from fastbp import graph as g
    w, x, b, y = g.Variable(0.8, "w"), g.Variable(1.5, "x"), g.Variable(-0.3, "b"), g.Variable(0.2, "y")
    f = 0.5 * (g.sigmoid(w * x + b) - y) ** 2 + 0.5 * w**2
    dw, db = g.grad(f, [w, b])
    print(g.gradient_table(f))   # one row per node: value, children S(u), df/du

This is an oracle and a teaching tool (one Python object per operation), not a fast path.
"""

import itertools
import weakref
from collections import namedtuple

import numpy as np

_creation_order = itertools.count()


def _as_value(value):
    """A float64 ndarray (0-d for a scalar) from a number or array-like; other types raise TypeError."""
    if isinstance(value, Node):
        raise TypeError("a Node's value must be a number or an array, not another Node")
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"graph values must be real numbers or arrays, got dtype {array.dtype}")
    return np.array(array, dtype=np.float64)  # a copy: later changes to the caller's array do not leak in


def _unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched, so that it has ``shape``.

    NumPy: ``grad.sum(axis=leading extra axes).sum(axis=axes where shape is 1, keepdims=True)``.
    """
    grad = np.asarray(grad, dtype=np.float64)
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


def _sigmoid(a):
    e = np.exp(-np.abs(a))  # never overflows
    s = 1.0 / (1.0 + e)
    return np.where(a >= 0, s, e * s)


# ---------------------------------------------------------------------------------------------------- gates
class Gate:
    """One operation. ``forward(*values)`` returns the output value and keeps what ``backward`` needs;
    ``backward(upstream)`` takes df/d(output) (shape of the output) and returns ``[df/d(input) for each input]``
    (each of its input's shape). ``needs_grad`` (one flag per input, set by the graph before each backward pass)
    lets a gate skip the gradient of an input nobody asked for (a constant); a skipped gradient is returned as
    None."""

    name = "gate"
    needs_grad = (True, True)

    def forward(self, *values):
        raise NotImplementedError

    def backward(self, upstream):
        raise NotImplementedError


class AddGate(Gate):
    """z = a + b (broadcasting): dz/da = 1, dz/db = 1."""

    name = "add"

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, dz):
        return [_unbroadcast(dz, self.shapes[0]), _unbroadcast(dz, self.shapes[1])]


class SubtractGate(Gate):
    """z = a - b (broadcasting): dz/da = 1, dz/db = -1."""

    name = "subtract"

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, dz):
        return [_unbroadcast(dz, self.shapes[0]), _unbroadcast(-dz, self.shapes[1])]


class MultiplyGate(Gate):
    """z = a * b (elementwise, broadcasting): dz/da = b, dz/db = a (the multiply gate of docs/background.md)."""

    name = "multiply"

    def forward(self, a, b):
        self.a, self.b = a, b  # must keep these around
        return a * b

    def backward(self, dz):
        return [_unbroadcast(dz * self.b, self.a.shape), _unbroadcast(dz * self.a, self.b.shape)]


class DivideGate(Gate):
    """z = a / b (broadcasting): dz/da = 1 / b, dz/db = -a / b^2 = -z / b."""

    name = "divide"

    def forward(self, a, b):
        self.a, self.b = a, b
        self.z = a / b
        return self.z

    def backward(self, dz):
        return [_unbroadcast(dz / self.b, self.a.shape), _unbroadcast(-dz * self.z / self.b, self.b.shape)]


class PowerGate(Gate):
    """z = a ** p (broadcasting): dz/da = p a^(p-1) (0 where p = 0: a^0 = 1 is constant, also at a = 0);
    dz/dp = a^p log a (0 where a^p = 0, and at a = 0 for p >= 0 as in PyTorch and JAX; NaN for a < 0, where the
    power of a real variable exponent is undefined). Each is computed only when that input needs a gradient
    (``needs_grad``), so a constant base such as ``0.0`` in ``0.0 ** p`` never evaluates ``0^(p-1)``."""

    name = "power"

    def forward(self, a, p):
        self.a, self.p = a, p
        self.z = a**p
        return self.z

    def backward(self, dz):
        da = dp = None
        if self.needs_grad[0]:
            constant = self.p == 0  # d(a^0)/da = 0; p a^(p-1) would give 0 * inf = NaN at a = 0
            base = np.where(constant, 1.0, self.a)  # so that a^(p-1) is not evaluated (no spurious warning) there
            da = _unbroadcast(dz * np.where(constant, 0.0, self.p * base ** (self.p - 1)), self.a.shape)
        if self.needs_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                # 0 where a^p = 0, and at a = 0 for p >= 0 (0^0 = 1 there), as PyTorch and JAX take it
                dz_dp = np.where((self.z == 0) | ((self.a == 0) & (self.p >= 0)), 0.0, self.z * np.log(self.a))
            dp = _unbroadcast(dz * dz_dp, self.p.shape)
        return [da, dp]


class ExpGate(Gate):
    """z = exp(a): dz/da = exp(a) = z."""

    name = "exp"

    def forward(self, a):
        self.z = np.exp(a)
        return self.z

    def backward(self, dz):
        return [dz * self.z]


class LogGate(Gate):
    """z = log(a) (natural): dz/da = 1 / a."""

    name = "log"

    def forward(self, a):
        self.a = a
        return np.log(a)

    def backward(self, dz):
        return [dz / self.a]


class SigmoidGate(Gate):
    """z = sigma(a) = 1 / (1 + exp(-a)) (computed without overflow): dz/da = sigma'(a) = sigma(a) sigma(-a).

    That is z (1 - z), but computed from the input: for a > ~37, z rounds to 1 and 1 - z to 0, while
    sigma(-a) = exp(-a) / (1 + exp(-a)) keeps full relative precision (sigma'(40) = 4.25e-18, not 0)."""

    name = "sigmoid"

    def forward(self, a):
        self.a = a
        self.z = _sigmoid(a)
        return self.z

    def backward(self, dz):
        return [dz * self.z * _sigmoid(-self.a)]


class TanhGate(Gate):
    """z = tanh(a): dz/da = 1 - z^2."""

    name = "tanh"

    def forward(self, a):
        self.z = np.tanh(a)
        return self.z

    def backward(self, dz):
        return [dz * (1.0 - self.z**2)]


class ReluGate(Gate):
    """z = max(a, 0): dz/da = 1 where a > 0, else 0 (0 at the kink a = 0, as in fastbp's kernels). A NaN stays NaN
    and passes the gradient on (a diverged value is not hidden), and an inactive unit passes 0 even of an infinite
    gradient, as np.maximum and PyTorch's and JAX's relu do."""

    name = "relu"

    def forward(self, a):
        self.active = ~(a <= 0)  # NaN counts as active
        return np.where(self.active, a, 0.0)

    def backward(self, dz):
        return [np.where(self.active, dz, 0.0)]


class LeakyReluGate(Gate):
    """z = a where a > 0, else slope * a: dz/da = 1 where a > 0, else slope (the slope also at the kink a = 0, as
    fastbp's kernels take it from the output z = 0)."""

    name = "leaky_relu"

    def __init__(self, slope):
        self.slope = slope

    def forward(self, a):
        self.active = a > 0
        return np.where(self.active, a, self.slope * a)

    def backward(self, dz):
        return [dz * np.where(self.active, 1.0, self.slope)]


class SqrtGate(Gate):
    """z = sqrt(a) (a >= 0): dz/da = 1 / (2 sqrt(a)) = 1 / (2 z) (infinite at a = 0)."""

    name = "sqrt"

    def forward(self, a):
        self.z = np.sqrt(a)
        return self.z

    def backward(self, dz):
        return [dz / (2.0 * self.z)]


class MatMulGate(Gate):
    """z = a @ b for vectors and matrices (NumPy's rules for 1-D operands): with A = a as (n, k), B = b as
    (k, m) and dZ = dz as (n, m), dA = dZ @ B.T and dB = A.T @ dZ, reshaped back to a's and b's shapes."""

    name = "matmul"

    def forward(self, a, b):
        if not (1 <= a.ndim <= 2 and 1 <= b.ndim <= 2):
            raise ValueError(f"matmul takes vectors and matrices, got shapes {a.shape} and {b.shape}")
        self.a, self.b = a, b
        return a @ b

    def backward(self, dz):
        A = self.a.reshape(1, -1) if self.a.ndim == 1 else self.a
        B = self.b.reshape(-1, 1) if self.b.ndim == 1 else self.b
        dZ = np.reshape(dz, (A.shape[0], B.shape[1]))
        return [(dZ @ B.T).reshape(self.a.shape), (A.T @ dZ).reshape(self.b.shape)]


class SumGate(Gate):
    """z = sum of a over ``axis`` (None: all elements): dz/da = 1, so the upstream gradient is spread back."""

    name = "sum"

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.shape = a.shape
        return np.sum(a, axis=self.axis, keepdims=self.keepdims)

    def backward(self, dz):
        if self.axis is not None and not self.keepdims:
            dz = np.expand_dims(dz, self.axis)
        return [np.broadcast_to(dz, self.shape)]


class MeanGate(SumGate):
    """z = mean of a over ``axis``: dz/da = 1 / (number of elements averaged)."""

    name = "mean"

    def forward(self, a):
        total = super().forward(a)
        # elements per result; 0 when they are none: NaN with NumPy's warning, as np.mean of an empty slice
        self.count = a.size // np.size(total) if np.size(total) else 0
        return total / np.float64(self.count)

    def backward(self, dz):
        return [g / self.count for g in super().backward(dz)]


_LABELS_RULE = (
    "the dtype decides: an integer dtype means class labels, (n,) for (n, classes) logits (an int for 1-D logits); "
    "a floating dtype (or a Node) means target rows of the logits' shape (one-hot or probabilities)"
)


class SoftmaxCrossEntropyGate(Gate):
    """z = mean over the n samples (rows) of ``-sum_j y_j log softmax(logits)_j``, log-softmax by log-sum-exp.

    Targets are either integer class labels held by the gate (``labels``: (n,) ints, or an int for 1-D logits),
    or a second input Y of the logits' shape (one-hot rows, probabilities, or any non-negative weights).
    Gradients (docs/background.md, section 5: softmax(h) - y, here for the batch mean):
    ``dz/dlogits = (P * sum_j y_j - Y) / n`` (= (P - Y) / n when each row of Y sums to 1) and
    ``dz/dY = -log P / n``. A logit of -inf is a class of probability 0: where its target is 0 it adds
    ``0 log 0 = 0`` to the loss (not NaN), and its gradient is 0.
    """

    name = "softmax_cross_entropy"

    def __init__(self, labels=None):
        self.labels = labels

    def forward(self, logits, targets=None):
        if logits.ndim not in (1, 2) or logits.shape[-1] < 1:
            raise ValueError(f"logits must be (n, classes) or (classes,), got shape {logits.shape}")
        Z = logits.reshape(1, -1) if logits.ndim == 1 else logits
        n, k = Z.shape
        if targets is None:
            labels = self.labels if logits.ndim == 2 else np.reshape(self.labels, -1)  # an int for 1-D logits
            if labels.shape != (n,):
                expected = "one int" if logits.ndim == 1 else f"shape ({n},)"
                raise ValueError(
                    f"labels must hold {n} class label{'s' if n != 1 else ''} for logits {logits.shape} ({expected}), "
                    "got shape "
                    f"{np.shape(self.labels)}; {_LABELS_RULE}"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= k):
                raise ValueError(f"labels must be in [0, {k}), got values in [{labels.min()}, {labels.max()}]")
            Y = np.zeros((n, k))
            Y[np.arange(n), labels] = 1.0
        else:
            if targets.shape != logits.shape:
                raise ValueError(
                    f"float targets must be target rows of the logits' shape {logits.shape}, got shape "
                    f"{targets.shape}; {_LABELS_RULE}"
                )
            Y = targets.reshape(n, k)
        z_max = Z.max(axis=1, keepdims=True)
        self.log_P = Z - (z_max + np.log(np.exp(Z - z_max).sum(axis=1, keepdims=True)))
        self.Y, self.n, self.shape = Y, n, logits.shape
        return -(Y * np.where(Y == 0, 0.0, self.log_P)).sum() / n  # 0 log 0 = 0 where a logit is -inf

    def backward(self, dz):
        P = np.exp(self.log_P)
        dlogits = (dz / self.n) * (P * self.Y.sum(axis=1, keepdims=True) - self.Y)
        grads = [dlogits.reshape(self.shape)]
        if self.labels is None:
            grads.append((-(dz / self.n) * self.log_P).reshape(self.shape) if self.needs_grad[1] else None)
        return grads


# ---------------------------------------------------------------------------------------------------- nodes
class Node:
    """A value in the computation graph: a source (``gate`` None) or the output of ``gate`` applied to ``inputs``.

    Attributes: ``value`` (float64 ndarray, 0-d for scalars), ``gate``, ``inputs`` (tuple of Nodes),
    ``children`` (the set S(u) of nodes that take this one as an input; weak references, so a graph that is no
    longer used is freed), ``index`` (creation order), ``name`` (for ``gradient_table``; may be None),
    ``constant`` (True for wrapped constants and for nodes computed from constants only: the backward pass skips
    them unless ``grad`` asks for one, which then gets its real gradient).
    Python operators ``+ - * / ** @`` (and their reflected forms, and unary ``-``) build new nodes.
    """

    __slots__ = ("__weakref__", "_value", "children", "constant", "gate", "index", "inputs", "name")
    __array_ufunc__ = None  # NumPy defers to our reflected operators: ndarray + Node -> Node.__radd__

    def __init__(self, value, gate=None, inputs=(), name=None, constant=False):
        self._value = _as_value(value)
        self.gate = gate
        self.inputs = tuple(inputs)
        self.name = name
        self.constant = bool(constant)
        self.index = next(_creation_order)
        self.children = weakref.WeakSet()
        for node in self.inputs:
            node.children.add(self)

    @property
    def value(self):
        """The node's value (float64 ndarray). Setting it on a source node and calling ``forward`` on an
        expression recomputes the expression."""
        return self._value

    @value.setter
    def value(self, value):
        self._value = _as_value(value)

    @property
    def shape(self):
        """The shape of the value (a tuple)."""
        return self._value.shape

    @property
    def ndim(self):
        """The number of dimensions of the value (int)."""
        return self._value.ndim

    def __float__(self):
        return float(self._value)

    def __repr__(self):
        what = "constant" if self.constant else (self.gate.name if self.gate else "variable")
        label = f" {self.name!r}" if self.name else ""
        return f"<{type(self).__name__}{label} #{self.index} {what} shape={self.shape} value={_brief(self._value)}>"

    def __add__(self, other):
        return _apply(AddGate(), self, other)

    def __radd__(self, other):
        return _apply(AddGate(), other, self)

    def __sub__(self, other):
        return _apply(SubtractGate(), self, other)

    def __rsub__(self, other):
        return _apply(SubtractGate(), other, self)

    def __mul__(self, other):
        return _apply(MultiplyGate(), self, other)

    def __rmul__(self, other):
        return _apply(MultiplyGate(), other, self)

    def __truediv__(self, other):
        return _apply(DivideGate(), self, other)

    def __rtruediv__(self, other):
        return _apply(DivideGate(), other, self)

    def __pow__(self, other):
        return _apply(PowerGate(), self, other)

    def __rpow__(self, other):
        return _apply(PowerGate(), other, self)

    def __matmul__(self, other):
        return _apply(MatMulGate(), self, other)

    def __rmatmul__(self, other):
        return _apply(MatMulGate(), other, self)

    def __neg__(self):
        return _apply(MultiplyGate(), -1.0, self)

    def __pos__(self):
        return self


class Variable(Node):
    """An input of the graph: a float or an array of any shape (stored as float64), optionally named.

    ``Variable(value, name=None)``; ``value`` can be set later (then ``forward`` recomputes expressions).
    """

    __slots__ = ()

    def __init__(self, value, name=None):
        super().__init__(value, name=name)


def _lift(x):
    """A Node as is; anything else (number, array) as a constant source node."""
    return x if isinstance(x, Node) else Node(x, constant=True)


def _apply(gate, *operands):
    """Record the node ``gate(*operands)``: lift constants, run the gate's forward, link the children sets."""
    inputs = [_lift(x) for x in operands]
    gate.needs_grad = tuple(not x.constant for x in inputs)
    value = gate.forward(*(x.value for x in inputs))
    return Node(value, gate, inputs, constant=all(x.constant for x in inputs))


def exp(a):
    """Elementwise ``exp(a)``.

    a: a Node or a constant (number or array-like) of any shape. Returns a new float64 Node of a's shape.
    """
    return _apply(ExpGate(), a)


def log(a):
    """Elementwise natural log of ``a`` (positive values; 0 gives -inf, negative values NaN, as ``np.log``).

    a: a Node or a constant of any shape. Returns a new float64 Node of a's shape.
    """
    return _apply(LogGate(), a)


def sigmoid(a):
    """Elementwise logistic sigmoid ``1 / (1 + exp(-a))``, computed without overflow for any finite a.

    a: a Node or a constant of any shape. Returns a new float64 Node of a's shape, values in [0, 1].
    """
    return _apply(SigmoidGate(), a)


def tanh(a):
    """Elementwise ``tanh(a)``.

    a: a Node or a constant of any shape. Returns a new float64 Node of a's shape, values in [-1, 1].
    """
    return _apply(TanhGate(), a)


def relu(a):
    """Elementwise ``max(a, 0)`` (its gradient is 0 at the kink a = 0, as in fastbp's kernels).

    a: a Node or a constant of any shape. Returns a new float64 Node of a's shape.
    """
    return _apply(ReluGate(), a)


def leaky_relu(a, slope=0.01):
    """Elementwise ``a if a > 0 else slope * a`` (its gradient is the slope at the kink a = 0, as in fastbp's
    kernels; fastbp's slope is 0.01).

    a: a Node or a constant of any shape; slope: a float. Returns a new float64 Node of a's shape.
    """
    return _apply(LeakyReluGate(float(slope)), a)


def sqrt(a):
    """Elementwise square root of ``a`` (non-negative values; negative values give NaN, as ``np.sqrt``).

    a: a Node or a constant of any shape. Returns a new float64 Node of a's shape.
    """
    return _apply(SqrtGate(), a)


def matmul(a, b):
    """Matrix product ``a @ b`` of vectors and matrices, with NumPy's rules for 1-D operands.

    a: a Node or constant of shape (n, k) or (k,); b: of shape (k, m) or (k,). Returns a new float64 Node of shape
    (n, m), (m,) for a 1-D a, (n,) for a 1-D b, or () for two vectors. Operands of other dimensions raise
    ValueError.
    """
    return _apply(MatMulGate(), a, b)


def sum(a, axis=None, keepdims=False):  # shadows the builtin inside this module on purpose: g.sum
    """Sum of ``a`` over ``axis`` (an int, a tuple of ints, or None for all elements), as ``np.sum``.

    a: a Node or a constant of any shape. Returns a new float64 Node of shape ``np.sum(a, axis, keepdims=...)``'s:
    () for ``axis=None``; a's shape without the summed axes, or with them kept as 1 when ``keepdims``.
    """
    return _apply(SumGate(axis, keepdims), a)


def mean(a, axis=None, keepdims=False):
    """Mean of ``a`` over ``axis`` (an int, a tuple of ints, or None for all elements), as ``np.mean``.

    a: a Node or a constant of any shape. Returns a new float64 Node of the same shape as ``sum`` gives.
    """
    return _apply(MeanGate(axis, keepdims), a)


def softmax_cross_entropy(logits, labels):
    """Mean over samples of the cross-entropy of softmax(logits): a new float64 Node of shape ().

    logits: Node (or constant) of shape (n, classes), or (classes,) for one sample. labels: the dtype decides
    what they are. An integer dtype means class labels: an int array of shape (n,) (or an int for 1-D logits),
    held as constants. A floating dtype, or a Node, means targets of the logits' shape (one-hot rows,
    probabilities), which are an input of the node (a Node gets the gradient ``-log softmax / n``). So integer
    one-hot rows must be converted with ``labels.astype(float)``, and float class labels with
    ``labels.astype(int)``; other shapes raise ValueError saying so. Logits of -inf are classes of probability 0.
    """
    if not isinstance(labels, Node):
        array = np.asarray(labels)
        logits_shape = logits.shape if isinstance(logits, Node) else np.shape(logits)
        labels_shape = logits_shape[:1] if len(logits_shape) == 2 else ()
        if array.dtype.kind == "b":
            raise TypeError(f"labels must be integer class labels or float target rows, not booleans; {_LABELS_RULE}")
        if array.dtype.kind in "iu":
            if array.size and array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
                raise ValueError(f"labels must be in [0, {logits_shape[-1]}), got a label of {array.max()}")
            # one sample's label as a 1-element array is a label whatever the class count (one class included)
            one_label = len(logits_shape) == 1 and array.size == 1
            if array.shape == logits_shape and array.shape != labels_shape and not one_label:
                raise ValueError(
                    f"labels has an integer dtype and the logits' shape {logits_shape}: integer dtype means class "
                    f"labels of shape {labels_shape}; pass one-hot or probability rows as floats "
                    "(labels.astype(float))"
                )
            return _apply(SoftmaxCrossEntropyGate(array.astype(np.int64)), logits)
        if array.dtype.kind == "f" and array.shape == labels_shape and array.shape != logits_shape:
            raise ValueError(
                f"labels has a floating dtype and shape {array.shape}: floating dtype means target rows of the "
                f"logits' shape {logits_shape}; pass class labels as integers (labels.astype(int))"
            )
    return _apply(SoftmaxCrossEntropyGate(), logits, labels)


# ---------------------------------------------------------------------------------------------------- passes
def _graph(f):
    """The nodes ``f`` depends on (``f`` included), in creation order, which is a topological order."""
    seen = {id(f): f}
    stack = [f]
    while stack:
        for node in stack.pop().inputs:
            if id(node) not in seen:
                seen[id(node)] = node
                stack.append(node)
    return sorted(seen.values(), key=lambda node: node.index)


def _check_output(f):
    if not isinstance(f, Node):
        raise TypeError(f"f must be a graph Node, got {type(f).__name__}")
    if f.value.size != 1:
        raise ValueError(f"f must be a scalar (one element) to differentiate, got shape {f.shape}")


def forward(f):
    """Forward pass: recompute every node ``f`` depends on, in topological order, from the current values of the
    source nodes (``for gate in nodes_topologically_sorted(): gate.forward()``). Returns f's value."""
    for node in _graph(f):
        if node.gate is not None:
            node._value = _as_value(node.gate.forward(*(x.value for x in node.inputs)))
    return f.value


def backward(f, wrt=()):
    """Backward pass: the gradient table ``{node: df/dnode}`` for every non-constant node of f's graph, and for the
    nodes in ``wrt`` (and the constant nodes between them and f).

    f: a Node with one element. wrt: Nodes whose gradient is wanted even if they are constants (nodes computed from
    constants only), as ``grad`` asks. Nodes are visited in reverse creation order; for node u,
    ``df/du = sum over v in S(u) (restricted to f's graph) of df/dv * dv/du``, where ``df/dv * dv/du`` is taken
    from gate v's ``backward(df/dv)`` (run once per gate, and summed over every input slot of v that is u).
    Constant nodes that no ``wrt`` node reaches get no entry (their gradient is not needed). Each entry has the
    node's shape; arrays may be read-only views.
    """
    _check_output(f)
    nodes = _graph(f)
    members = {id(node) for node in nodes}
    # Nodes that need a gradient: the non-constant ones, the requested ones, and every node computed from a
    # requested one (on the way from it to f: its gradient is needed to get the requested node's).
    needed = {id(node) for node in wrt if id(node) in members}
    for node in nodes:
        if not node.constant or (node.inputs and any(id(x) in needed for x in node.inputs)):
            needed.add(id(node))
    table = {f: np.ones_like(f.value)}
    downstream = {}  # v -> gate v's backward(df/dv): the downstream gradients of v's inputs
    for u in reversed(nodes[:-1]):  # f, created last, is nodes[-1]
        if id(u) not in needed:
            continue
        grad = None
        for v in sorted((v for v in u.children if id(v) in members), key=lambda v: v.index):
            if v not in downstream:
                v.gate.needs_grad = tuple(id(x) in needed for x in v.inputs)  # this pass's flags
                downstream[v] = v.gate.backward(table[v])
            for k, x in enumerate(v.inputs):
                if x is u:  # df/dv * dv/du for this input slot
                    grad = downstream[v][k] if grad is None else grad + downstream[v][k]
        table[u] = grad
    return table


def grad(f, wrt):
    """Gradients of the scalar ``f`` with respect to the nodes ``wrt``.

    f: a Node with one element. wrt: a Node or a list of Nodes: any node, not only variables (pre-activations,
    and also nodes computed from constants only, such as ``g.exp(np.array(1.0))``, get their real gradient).
    Returns, for each, a new float64 array of that node's shape, or a Python float for a 0-d node (a list when
    ``wrt`` is a list). A node ``f`` does not depend on gets zeros.
    """
    single = isinstance(wrt, Node)
    try:
        nodes = [wrt] if single else list(wrt)
    except TypeError:
        raise TypeError(f"wrt must be a graph Node or a list of Nodes, got {type(wrt).__name__}") from None
    for k, node in enumerate(nodes):
        if not isinstance(node, Node):
            raise TypeError(f"wrt[{k}] must be a graph Node, got {type(node).__name__}")
    table = backward(f, nodes)
    out = []
    for node in nodes:
        g = table.get(node)
        g = np.zeros(node.shape) if g is None else np.array(g, dtype=np.float64)
        out.append(float(g) if g.ndim == 0 else g)
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------------- the table
Row = namedtuple("Row", "name definition children value grad")


def _brief(a):
    a = np.asarray(a)
    if a.size <= 4:
        if a.ndim == 0:
            return f"{float(a):.10g}"
        return " ".join(np.array2string(a, precision=8, separator=", ").split())  # one line: a 2x2 would wrap a cell
    return f"{a.shape} array, |.|={np.linalg.norm(a):.6g}"


class GradientTable(list):
    """Rows ``Row(name, definition, children, value, grad)``, one per non-constant node, in creation order;
    ``str()`` formats them as a table (``children`` is the set S(u) as names; ``grad`` is df/du)."""

    def __str__(self):
        header = ("node", "definition", "children S(u)", "value", "df/du")
        cells = [header] + [
            (r.name, r.definition, "{" + ", ".join(r.children) + "}", _brief(r.value), _brief(r.grad)) for r in self
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def gradient_table(f):
    """The gradient table of the scalar ``f`` as docs/background.md lays it out: one row per node of f's graph
    (constants left out), in creation order, with its definition, children S(u), value and df/du.

    Unnamed variables are shown as ``v1, v2, ...`` and unnamed operation nodes as ``u1, u2, ...``, numbered in
    creation order, so an expression built in the order of that page's example prints its names (u1..u9). Returns a
    ``GradientTable`` (a list of ``Row``); ``print(g.gradient_table(f))`` shows it.
    """
    table = backward(f)
    nodes = [node for node in _graph(f) if not node.constant]
    names, counters = {}, {"v": 0, "u": 0}
    for node in nodes:
        if node.name:
            names[node] = node.name
        else:
            prefix = "u" if node.gate else "v"
            counters[prefix] += 1
            names[node] = f"{prefix}{counters[prefix]}"
    members = set(nodes)
    rows = GradientTable()
    for node in nodes:
        if node.gate is None:
            definition = "input"
        else:
            args = ", ".join(names[x] if x in members else _brief(x.value) for x in node.inputs)
            definition = f"{node.gate.name}({args})"
        children = [names[v] for v in sorted(node.children, key=lambda v: v.index) if v in members]
        rows.append(Row(names[node], definition, children, node.value, np.asarray(table[node])))
    return rows
