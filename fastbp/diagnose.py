"""Gradient-flow diagnostics: the vanishing and exploding gradient experiments of docs/background.md (section 7).

Backpropagation multiplies the error by ``f'(z_t) W_t`` once per layer, so ``df/dh_k`` is the output error times a
product of ``L - k`` such factors. With sigmoid, ``f' <= 1/4``: the product vanishes and the first layers stop
learning. With relu, ``f' = 1`` on active units and the product stays level. With large weights it grows
(explodes), and gradient clipping (``clip_norm``) keeps the steps finite.

:func:`run` measures exactly that on scikit-learn's digits (64 inputs, 10 classes):

1. the same deep network (default 10 hidden layers of 64) with sigmoid, tanh and relu, from a *plain*
   initialisation: ``W ~ N(0, 1 / fan_in)``, ``b = 0``, the same draws for every activation (no
   activation-specific gain, no normalisation layers, no residual connections), so that only the activation
   differs; per-layer norms of the weight gradients ``||dW[l]||`` and of the errors ``||delta[l]||`` at
   initialisation, then a short SGD training that records both per epoch (``Trainer(record_deltas=True)``);
2. the exploding case: the relu network with weights ``gain`` times larger, trained by the same SGD without
   clipping (which raises :class:`~fastbp.DivergenceError`) and with ``clip_norm`` (which stays finite).

With the plain initialisation relu's delta still shrinks toward the input (half the units are off, so its
variance halves per layer) while the activations feeding each weight gradient grow by the same factor: the weight
gradients stay level. He initialisation (fastbp's default for relu) levels delta too.
"""

import numpy as np

from . import data
from .network import MLP
from .optim import SGD
from .reference import deltas
from .trainer import DivergenceError, Trainer

ACTIVATIONS = ("sigmoid", "tanh", "relu")


def plain_network(activation, depth=10, width=64, n_in=64, n_out=10, gain=1.0, seed=0):
    """A float64 softmax MLP ``[n_in] + [width] * depth + [n_out]`` with ``W[l] ~ N(0, gain^2 / fan_in)`` and zero
    biases, drawn from ``seed`` in layer order (so equal seeds give equal weights whatever the activation)."""
    net = MLP([n_in] + [width] * depth + [n_out], activation, "softmax", dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    for W, b in zip(net.coefs, net.intercepts, strict=True):
        W[...] = gain * rng.standard_normal(W.shape) / np.sqrt(W.shape[0])
        b[...] = 0.0
    return net


def layer_norms(net, X, y):
    """Per-layer norms at ``net``'s current parameters on the batch (X, y).

    net: an :class:`~fastbp.MLP` (any dtype). X: array (n, n_in), the inputs. y: the targets, as for
    ``net.value_and_grad``: (n,) integer class labels for a softmax output, or (n, n_out) target rows.
    Returns a dict with ``grad`` (the Frobenius norm of ``dW[l]``, from the compiled gradient), ``delta`` (of
    ``delta[l] = dC/dZ[l]``, an (n, fan_out[l]) array from :func:`fastbp.reference.deltas`; both for the
    batch-mean loss), and ``loss`` and ``total`` (the global gradient norm), all Python floats. Lists have one
    float per layer, input layer first."""
    loss, grads = net.value_and_grad(X, y)
    dW, _ = net.unflatten(grads)
    return {
        "grad": [float(np.linalg.norm(g)) for g in dW],
        "delta": [float(np.linalg.norm(d)) for d in deltas(net, X, y)],
        "loss": float(loss),
        "total": float(np.linalg.norm(grads)),
    }


def _digits(seed):
    X, y = data.load_digits()
    return data.prepare(X, y, test_size=0.2, seed=seed)


def run(depth=10, width=64, samples=256, epochs=10, lr=0.1, batch_size=32, gain=2.0, clip_norm=1.0, seed=0):
    """Run both experiments; returns a dict (plain Python values, JSON-serialisable).

    The data are scikit-learn's digits, split 80/20 and standardised by :func:`fastbp.data.prepare` with ``seed``.
    ``result["vanishing"][activation]`` holds ``grad``, ``delta``, ``loss`` and ``total`` (see
    :func:`layer_norms`; at initialisation, on the first ``samples`` training rows), ``ratio`` (``grad[-1] /
    grad[0]``: how many times smaller the first layer's weight gradient is than the last layer's),
    ``loss_per_epoch`` (training loss of each epoch of ``SGD(lr)``), ``grad_norm`` and ``delta_norm`` (the
    trainer's per-layer history, last epoch) and ``val_accuracy`` (on the held-out 20%, after training).
    ``result["exploding"]`` holds ``gain``, the norms at that initialisation, and two runs (``clip_norm`` None
    and ``clip_norm``), each with ``diverged`` (bool), ``message`` (the DivergenceError text, or ""),
    ``loss_per_epoch`` (completed epochs) and ``finite`` (the parameters at the end). ``result["config"]`` echoes
    the arguments and the data sizes.
    """
    X_train, X_test, y_train, y_test = _digits(seed)
    n_in, n_out = X_train.shape[1], int(y_train.max()) + 1
    Xb, yb = X_train[:samples], y_train[:samples]
    config = dict(depth=depth, width=width, samples=int(Xb.shape[0]), epochs=epochs, lr=lr, batch_size=batch_size)
    config.update(gain=gain, clip_norm=clip_norm, seed=seed, n_train=int(X_train.shape[0]), n_in=n_in, n_out=n_out)
    result = {"config": config, "vanishing": {}, "exploding": {}}

    def network(activation, g=1.0):
        return plain_network(activation, depth, width, n_in, n_out, gain=g, seed=seed)

    def trainer(net, clip=None):
        optimizer = SGD(lr, clip_norm=clip)
        return Trainer(net, optimizer, batch_size=batch_size, seed=seed, progress=False, record_deltas=True)

    for activation in ACTIVATIONS:
        net = network(activation)
        entry = layer_norms(net, Xb, yb)
        entry["ratio"] = entry["grad"][-1] / entry["grad"][0] if entry["grad"][0] > 0 else float("inf")
        history = trainer(net).fit(X_train, y_train, epochs=epochs, validation_data=(X_test, y_test))
        entry["loss_per_epoch"] = history["loss"]
        entry["grad_norm"] = history["grad_norm"][-1]
        entry["delta_norm"] = history["delta_norm"][-1]
        entry["val_accuracy"] = history["val_accuracy"][-1]
        result["vanishing"][activation] = entry

    explode = layer_norms(network("relu", gain), Xb, yb)
    explode.update(gain=gain, runs=[])
    for clip in (None, clip_norm):
        net = network("relu", gain)
        t = trainer(net, clip)
        run_ = {"clip_norm": clip, "diverged": False, "message": ""}
        try:
            t.fit(X_train, y_train, epochs=epochs)
        except DivergenceError as err:
            run_.update(diverged=True, message=str(err))
        run_["loss_per_epoch"] = t.history.get("loss", [])
        run_["finite"] = bool(np.isfinite(net.params).all())
        explode["runs"].append(run_)
    result["exploding"] = explode
    return result


def _row(label, values, fmt="{:>10.2e}"):
    return f"{label:<12}" + "".join(fmt.format(v) for v in values)


def _verdict(ratio):
    if ratio >= 100:
        return "vanishing: the first layer's gradient is over 100x smaller"
    if ratio <= 0.01:
        return "exploding: the first layer's gradient is over 100x larger"
    if 0.1 <= ratio <= 10:
        return "level: within 10x"
    return "between 10x and 100x"


def report(result):
    """The printed report of :func:`run`'s result: per-layer tables, ratios, training, the exploding case."""
    c, van = result["config"], result["vanishing"]
    shape = f"{c['n_in']}-{c['width']}x{c['depth']}-{c['n_out']}"
    lines = [
        f"network {shape} (softmax + cross-entropy) on digits, float64; plain initialisation W ~ N(0, 1/fan_in), "
        f"b = 0, the same draws for every activation; norms at initialisation on {c['samples']} training rows",
        "",
        "||dW[l]|| (weight gradient) per layer, input layer first:",
        _row("layer", ACTIVATIONS, "{:>10}"),
    ]
    for l in range(c["depth"] + 1):
        lines.append(_row(str(l + 1), [van[a]["grad"][l] for a in ACTIVATIONS]))
    lines += ["", "||delta[l]|| (dC/dZ) per layer:", _row("layer", ACTIVATIONS, "{:>10}")]
    for l in range(c["depth"] + 1):
        lines.append(_row(str(l + 1), [van[a]["delta"][l] for a in ACTIVATIONS]))
    lines.append("")
    for a in ACTIVATIONS:
        v = van[a]
        lines.append(
            f"{a:<8} ||dW[last]|| / ||dW[first]|| = {v['ratio']:<9.3g} ({_verdict(v['ratio'])}); after "
            f"{c['epochs']} epochs of SGD(lr={c['lr']:g}): loss {v['loss_per_epoch'][-1]:.4f}, test accuracy "
            f"{v['val_accuracy']:.3f}"
        )
    e = result["exploding"]
    lines += [
        "",
        f"exploding gradients: relu, W ~ N(0, {e['gain'] ** 2:g}/fan_in) (gain {e['gain']:g}): loss at "
        f"initialisation {e['loss']:.4g}, gradient norm {e['total']:.4g}, ||delta[1]|| / ||delta[L]|| = "
        f"{e['delta'][0] / e['delta'][-1]:.3g}",
    ]
    for r in e["runs"]:
        what = "no clipping" if r["clip_norm"] is None else f"clip_norm={r['clip_norm']:g}"
        if r["diverged"]:
            outcome = "DIVERGED: " + r["message"].split(". ")[0]
        else:
            losses = r["loss_per_epoch"]
            outcome = f"finite; training loss {losses[0]:.4g} (epoch 1) -> {losses[-1]:.4g} (epoch {len(losses)})"
        lines.append(f"  SGD(lr={c['lr']:g}), {what:<13} {outcome}")
    return "\n".join(lines)


def plot(result, path):
    """Write the three panels (per-layer norms at initialisation, after training, and in the exploding case; log
    scale, layer on the x axis) to a PNG at ``path``. Returns the path."""
    from .plot import pyplot

    plt = pyplot()
    c, van, e = result["config"], result["vanishing"], result["exploding"]
    layers = np.arange(1, c["depth"] + 2)
    colors = {"sigmoid": "tab:red", "tanh": "tab:orange", "relu": "tab:blue"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    for a in ACTIVATIONS:
        ax.plot(layers, van[a]["grad"], "o-", color=colors[a], label=f"{a} ||dW||")
        ax.plot(layers, van[a]["delta"], "s--", color=colors[a], alpha=0.6, label=f"{a} ||delta||")
    ax.set_title(f"at initialisation, W ~ N(0, 1/fan_in)\n{c['depth']} hidden layers of {c['width']}")
    ax = axes[1]
    for a in ACTIVATIONS:
        ax.plot(layers, van[a]["grad_norm"], "o-", color=colors[a], label=f"{a} ||(dW, db)||")
        ax.plot(layers, van[a]["delta_norm"], "s--", color=colors[a], alpha=0.6, label=f"{a} ||delta||")
    ax.set_title(f"after {c['epochs']} epochs of SGD(lr={c['lr']:g}) (trainer history)")
    ax = axes[2]
    ax.plot(layers, e["grad"], "o-", color="tab:blue", label="relu ||dW||")
    ax.plot(layers, e["delta"], "s--", color="tab:blue", alpha=0.6, label="relu ||delta||")
    outcome = []
    for r in e["runs"]:
        what = "no clipping" if r["clip_norm"] is None else f"clip_norm={r['clip_norm']:g}"
        losses = r["loss_per_epoch"]
        outcome.append(f"{what}: " + ("diverged" if r["diverged"] else f"loss {losses[0]:.3g} -> {losses[-1]:.3g}"))
    ax.set_title(f"exploding: W ~ N(0, {e['gain'] ** 2:g}/fan_in), SGD(lr={c['lr']:g})\n" + "; ".join(outcome))
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = input layer)")
        ax.set_xticks(layers)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("norm")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
