"""Gradient-flow diagnostics: the vanishing and exploding gradient experiments of docs/background.md (section 7), and
its remedies.

Backpropagation multiplies the error by ``f'(z_t) W_t`` once per layer, so ``df/dh_k`` is the output error times a
product of ``L - k`` such factors. With sigmoid, ``f' <= 1/4``: the product vanishes and the first layers stop
learning. With relu, ``f' = 1`` on active units and the product stays level. With large weights it grows
(explodes), and gradient clipping (``clip_norm``) keeps the steps finite.

``run`` measures exactly that on scikit-learn's digits (64 inputs, 10 classes):

1. the same deep network (default 10 hidden layers of 64) with sigmoid, tanh and relu, from a *plain*
   initialisation: ``W ~ N(0, 1 / fan_in)``, ``b = 0``, the same draws for every activation (no
   activation-specific gain, and plain layers: the normalisation and residual connections are part 3), so that only
   the activation differs; per-layer norms of the weight gradients ``||dW[l]||`` and of the errors
   ``||delta[l]||`` at initialisation, then a short SGD training that records both per epoch
   (``Trainer(record_deltas=True)``);
2. the exploding case: the relu network with weights ``gain`` times larger, trained by the same SGD without
   clipping (which raises ``fastbp.DivergenceError``) and with ``clip_norm`` (which stays finite);
3. the remedies: the deep sigmoid network of part 1 (which does not learn at the default depth) side by side with
   the same network (the same initial weights) with batch normalisation on every hidden layer (``norm="batch"``) and
   with a residual connection on every hidden layer that keeps its width (``residual=``; all of them when the width
   equals the 64 inputs), each trained by the same SGD for the same epochs on the same data and seed: per-layer
   weight-gradient norms at initialisation and in the last epoch, and the accuracy on the held-out rows
   (``predict``, which uses batch norm's running statistics).

With the plain initialisation relu's delta still shrinks toward the input (half the units are off, so its
variance halves per layer) while the activations feeding each weight gradient grow by the same factor: the weight
gradients stay level. He initialisation (fastbp's default for relu) levels delta too.
"""

import math

import numpy as np

from . import _files, data
from . import _validation as v
from .network import MLP, _check_two_rows
from .optim import SGD
from .reference import deltas
from .trainer import DivergenceError, Trainer

ACTIVATIONS = ("sigmoid", "tanh", "relu")

#: The networks of the remedies experiment (part 3), and their names in the report and the plot.
REMEDIES = ("plain", "batch_norm", "residual")
REMEDY_NAMES = {"plain": "plain", "batch_norm": "batch norm", "residual": "residual"}

#: The hidden activation of the remedies experiment: the one whose gradients vanish.
REMEDY_ACTIVATION = "sigmoid"


def plain_network(activation, depth=10, width=64, n_in=64, n_out=10, gain=1.0, seed=0, norm=None, residual=False):
    """A float64 softmax MLP ``[n_in] + [width] * depth + [n_out]`` with ``W[l] ~ N(0, gain^2 / fan_in)`` and zero
    biases, drawn from ``seed`` in layer order (so equal seeds give equal weights whatever the activation and the
    layer options). ``norm`` and ``residual`` are passed to ``fastbp.MLP`` (the normalisation's gamma starts
    at 1 and beta at 0)."""
    sizes = [n_in] + [width] * depth + [n_out]
    net = MLP(sizes, activation, "softmax", dtype="float64", seed=seed, norm=norm, residual=residual)
    rng = np.random.default_rng(seed)
    for W, b in zip(net.coefs, net.intercepts, strict=True):
        W[...] = gain * rng.standard_normal(W.shape) / np.sqrt(W.shape[0])
        b[...] = 0.0
    return net


def layer_norms(net, X, y):
    """Per-layer norms at ``net``'s current parameters on the batch (X, y).

    net: an ``fastbp.MLP`` (any dtype). X: array (n, n_in), the inputs. y: the targets, as for
    ``net.value_and_grad``: (n,) integer class labels for a softmax output, or (n, n_out) target rows.
    Returns a dict with ``grad`` (the Frobenius norm of ``dW[l]``, from the compiled gradient, in training mode:
    batch norm uses the batch's statistics), ``delta`` (of ``delta[l] = dC/dZ[l]``, an (n, fan_out[l]) array from
    ``fastbp.reference.deltas``; both for the batch-mean loss), and ``loss`` and ``total`` (the global gradient
    norm), all Python floats. Lists have one float per layer, input layer first. ``delta`` is None for a network
    with normalisation, residual connections or dropout: for those only the compiled gradient is used."""
    loss, grads = net.value_and_grad(X, y)
    dW, _ = net.unflatten(grads)
    plain = not (any(net.norms) or any(net.residuals) or any(net.dropouts))
    return {
        "grad": [float(np.linalg.norm(g)) for g in dW],
        "delta": [float(np.linalg.norm(d)) for d in deltas(net, X, y)] if plain else None,
        "loss": float(loss),
        "total": float(np.linalg.norm(grads)),
    }


def _digits(seed):
    X, y = data.load_digits()
    return data.prepare(X, y, test_size=0.2, seed=seed)


def _ratio(last, first):
    """last / first of two gradient norms: inf when only the first is 0, NaN when both are or either is NaN (a run
    that diverged before its norms were measured)."""
    if math.isnan(last) or math.isnan(first):
        return math.nan
    return last / first if first > 0 else math.inf if last > 0 else math.nan


def run(depth=10, width=64, samples=256, epochs=10, lr=0.1, batch_size=32, gain=2.0, clip_norm=1.0, seed=0):
    """Run both experiments; returns a dict (plain Python values; NaN where a run diverged, which ``fastbp diagnose
    --json`` writes as null). ``depth``, ``width``: the hidden layers of the networks (see ``plain_network``);
    ``batch_size``: the mini-batch of every training run.

    The data are scikit-learn's digits, split 80/20 and standardised by ``fastbp.data.prepare`` with ``seed``.
    ``result["vanishing"][activation]`` holds ``grad``, ``delta``, ``loss`` and ``total`` (see
    ``layer_norms``; at initialisation, on the first ``samples`` training rows), ``ratio`` (``grad[-1] /
    grad[0]``: how many times smaller the first layer's weight gradient is than the last layer's),
    ``loss_per_epoch`` (training loss of each epoch of ``SGD(lr)``), ``grad_norm`` and ``delta_norm`` (the
    trainer's per-layer history, last epoch) and ``val_accuracy`` (on the held-out 20%, after training).
    Every training run also holds ``diverged`` and ``message``: a run whose loss diverges (a large ``lr``) stops
    there, keeps the epochs it completed (``grad_norm``, ``delta_norm`` and ``val_accuracy`` are NaN when it
    completed none) and the experiment goes on with the next network.
    ``result["exploding"]`` holds ``gain``, the norms at that initialisation, and two runs (``clip_norm`` None
    and ``clip_norm``), each with ``diverged`` (bool), ``message`` (the DivergenceError text, or ""),
    ``loss_per_epoch`` (completed epochs) and ``finite`` (the parameters at the end).
    ``result["remedies"][name]``, for ``name`` in ``REMEDIES`` (the sigmoid network plain, with batch norm on
    every hidden layer, with residual connections on the hidden layers that keep their width; the same initial
    weights, and each trained as in the vanishing experiment), holds ``norm`` and ``residual`` (the options per
    hidden layer), ``grad``, ``loss``, ``total`` and ``ratio`` (at initialisation, as above; no ``delta``),
    ``loss_per_epoch``, ``grad_norm`` (per layer, the norm of the layer's whole gradient, gamma and beta included,
    over the last epoch's steps), ``accuracy_per_epoch`` and ``test_accuracy`` (argmax of ``predict`` on the
    held-out 20%, in evaluation mode: batch norm's running statistics). ``result["config"]`` echoes the arguments
    and the data sizes.
    """
    # the arguments that reach no check of their own before minutes of work (the others: MLP, SGD, Trainer)
    samples = v.check_int(samples, "samples")
    if samples < 2:  # the batch-norm network's gradient at initialisation needs a batch variance
        raise ValueError(f"samples must be at least 2 (batch norm needs a batch variance), got {samples}")
    batch_size = v.check_int(batch_size, "batch_size", minimum=1)
    seed = v.check_int(seed, "seed", minimum=0)
    depth = v.check_int(depth, "depth", minimum=1)  # the remedies put batch norm on the hidden layers
    gain = v.check_float(gain, "gain", minimum=0.0, strict=True)
    if clip_norm is not None:
        clip_norm = v.check_float(clip_norm, "clip_norm", minimum=0.0, strict=True)
    X_train, X_test, y_train, y_test = _digits(seed)
    n_in, n_out = X_train.shape[1], int(y_train.max()) + 1
    # the batch-norm remedy's mini-batches, checked before the minutes of the other networks
    _check_two_rows(X_train.shape[0], "a mini-batch of the training set", batch_size)
    Xb, yb = X_train[:samples], y_train[:samples]
    config = dict(depth=depth, width=width, samples=int(Xb.shape[0]), epochs=epochs, lr=lr, batch_size=batch_size)
    config.update(gain=gain, clip_norm=clip_norm, seed=seed, n_train=int(X_train.shape[0]), n_test=int(X_test.shape[0]))
    config.update(n_in=n_in, n_out=n_out)
    result = {"config": config, "vanishing": {}, "exploding": {}}

    def network(activation, g=1.0):
        return plain_network(activation, depth, width, n_in, n_out, gain=g, seed=seed)

    def trainer(net, clip=None):
        optimizer = SGD(lr, clip_norm=clip)
        return Trainer(net, optimizer, batch_size=batch_size, seed=seed, progress=False, record_deltas=True)

    for activation in ACTIVATIONS:
        net = network(activation)
        entry = layer_norms(net, Xb, yb)
        entry["ratio"] = _ratio(entry["grad"][-1], entry["grad"][0])
        history = _fit(entry, trainer(net), X_train, y_train, epochs, (X_test, y_test))
        entry["loss_per_epoch"] = history.get("loss", [])
        entry["grad_norm"] = _last(history, "grad_norm", depth + 1)
        entry["delta_norm"] = _last(history, "delta_norm", depth + 1)
        # a diverged run keeps its last finite step's parameters: their accuracy
        entry["val_accuracy"] = _accuracy(net, X_test, y_test) if entry["diverged"] else history["val_accuracy"][-1]
        result["vanishing"][activation] = entry

    explode = layer_norms(network("relu", gain), Xb, yb)
    explode.update(gain=gain, runs=[])
    for clip in (None, clip_norm):
        net = network("relu", gain)
        run_ = {"clip_norm": clip}
        run_["loss_per_epoch"] = _fit(run_, trainer(net, clip), X_train, y_train, epochs).get("loss", [])
        run_["finite"] = bool(np.isfinite(net.params).all())
        explode["runs"].append(run_)
    result["exploding"] = explode

    hidden_sizes = [n_in] + [width] * depth
    keeps_width = [hidden_sizes[i] == hidden_sizes[i + 1] for i in range(depth)]
    options = {
        "plain": {"norm": None, "residual": False},
        "batch_norm": {"norm": "batch", "residual": False},
        "residual": {"norm": None, "residual": keeps_width},
    }
    config["remedy_activation"] = REMEDY_ACTIVATION
    config["residual_layers"] = [i + 1 for i, keeps in enumerate(keeps_width) if keeps]
    result["remedies"] = {}
    for name in REMEDIES:
        opts = options[name]
        net = plain_network(REMEDY_ACTIVATION, depth, width, n_in, n_out, seed=seed, **opts)
        entry = {"norm": list(net.norms[:-1]), "residual": list(net.residuals[:-1])}
        entry.update(layer_norms(net, Xb, yb))
        del entry["delta"]
        entry["ratio"] = _ratio(entry["grad"][-1], entry["grad"][0])
        t = Trainer(net, SGD(lr), batch_size=batch_size, seed=seed, progress=False)
        history = _fit(entry, t, X_train, y_train, epochs, (X_test, y_test))
        entry["loss_per_epoch"] = history.get("loss", [])
        entry["grad_norm"] = _last(history, "grad_norm", depth + 1)
        entry["accuracy_per_epoch"] = history.get("val_accuracy", [])
        entry["test_accuracy"] = _accuracy(net, X_test, y_test)
        result["remedies"][name] = entry
    return result


def _fit(entry, trainer, X, y, epochs, validation_data=None):
    """``trainer.fit``, with the outcome in ``entry`` (``diverged``, ``message``: the DivergenceError's text or "");
    returns the history of the epochs completed."""
    entry.update(diverged=False, message="")
    try:
        trainer.fit(X, y, epochs=epochs, validation_data=validation_data)
    except DivergenceError as err:
        entry.update(diverged=True, message=str(err))
    return trainer.history


def _last(history, key, size):
    """The last epoch's value of a per-layer history key; ``size`` NaNs when no epoch completed."""
    values = history.get(key, [])
    return values[-1] if values else [float("nan")] * size


def _accuracy(net, X, y):
    """The share of rows whose largest output is their label (``predict``: evaluation mode)."""
    return float(np.mean(net.predict(X).argmax(axis=1) == y))


def _outcome(entry):
    """How a training run ended, for the report: its final loss, or where it diverged."""
    losses = entry["loss_per_epoch"]
    if entry["diverged"]:
        return f"DIVERGED ({entry['message'].split('. ')[0]}; the network kept its last finite step)"
    return f"loss {losses[-1]:.4f}"


def _row(label, values, fmt="{:>10.2e}", width=12):
    return f"{label:<{width}}" + "".join(fmt.format(v) for v in values)


def _verdict(ratio):
    if ratio >= 100:
        return "vanishing: the first layer's gradient is over 100x smaller"
    if ratio <= 0.01:
        return "exploding: the first layer's gradient is over 100x larger"
    if 0.1 <= ratio <= 10:
        return "level: within 10x"
    return "between 10x and 100x"


def report(result):
    """The printed report of ``run``'s result: per-layer tables, ratios, training, the exploding case."""
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
            f"{c['epochs']} epochs of SGD(lr={c['lr']:g}): {_outcome(v)}, test accuracy "
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
    if "remedies" in result:
        lines += ["", *_remedies_report(c, result["remedies"])]
    return "\n".join(lines)


def _layer_ranges(layers):
    """1-based layer numbers as ranges: [1, 2, 3, 5] -> "1-3, 5"."""
    parts, start = [], None
    for i, l in enumerate(layers):
        start = l if start is None else start
        if i + 1 == len(layers) or layers[i + 1] != l + 1:
            parts.append(str(l) if start == l else f"{start}-{l}")
            start = None
    return ", ".join(parts) or "none"


def _remedies_report(c, rem):
    """The lines of the remedies table: per-layer gradient norms at initialisation and in the last epoch, the
    first-to-last ratios, the final training loss and the test accuracy of the three networks side by side."""
    names = [REMEDY_NAMES[r] for r in REMEDIES]
    w = 12  # column width
    blank = " " * w * len(REMEDIES)
    if c["residual_layers"]:
        which = _layer_ranges(c["residual_layers"])
        residual = (
            f"on hidden layer{'s' if len(c['residual_layers']) > 1 else ''} {which} (those that keep their width)"
        )
    else:
        residual = "where a hidden layer keeps its width (none here: the residual network is the plain one)"
    lines = [
        f"remedies for the {c['remedy_activation']} network above (plain: test accuracy "
        f"{rem['plain']['test_accuracy']:.3f}, chance 1/{c['n_out']}): the same network and initial weights with batch "
        f"norm on every hidden layer, and with residual connections {residual};",
        f"each trained by SGD(lr={c['lr']:g}), batch {c['batch_size']}, {c['epochs']} epochs, seed {c['seed']}; test "
        f"accuracy on the {c['n_test']} held-out rows in evaluation mode (batch norm's running statistics), chance "
        f"1/{c['n_out']}",
        f"{'':<14}{'||dW[l]|| at initialisation':<{w * len(REMEDIES)}}   ||(dW, db, gamma, beta)[l]||, last epoch",
        _row("layer", names, f"{{:>{w}}}", 14) + "   " + "".join(f"{n:>{w}}" for n in names),
    ]
    for l in range(c["depth"] + 1):
        init = [rem[r]["grad"][l] for r in REMEDIES]
        last = [rem[r]["grad_norm"][l] for r in REMEDIES]
        lines.append(_row(str(l + 1), init, f"{{:>{w}.2e}}", 14) + "   " + "".join(f"{v:>{w}.2e}" for v in last))
    init = [rem[r]["ratio"] for r in REMEDIES]
    last = [_ratio(rem[r]["grad_norm"][-1], rem[r]["grad_norm"][0]) for r in REMEDIES]
    lines.append(_row("last / first", init, f"{{:>{w}.3g}}", 14) + "   " + "".join(f"{v:>{w}.3g}" for v in last))
    losses = "".join(
        f"{'DIVERGED':>{w}}" if rem[r]["diverged"] else f"{rem[r]['loss_per_epoch'][-1]:>{w}.4f}" for r in REMEDIES
    )
    accuracies = "".join(f"{rem[r]['test_accuracy']:>{w}.3f}" for r in REMEDIES)
    lines.append(f"{'training loss':<14}{blank}   {losses}")
    lines.append(f"{'test accuracy':<14}{blank}   {accuracies}")
    for r in REMEDIES:
        if rem[r]["diverged"]:
            lines.append(f"{REMEDY_NAMES[r]}: {_outcome(rem[r])}")
    return lines


def plot(result, path):
    """Write the panels to a PNG at ``path``; returns the path. First row: per-layer norms at initialisation, after
    training, and in the exploding case (log scale, layer on the x axis). Second row, when the result has the
    remedies: the weight-gradient norms of the plain, batch-norm and residual sigmoid networks at initialisation and
    in the last epoch, and their test accuracy per epoch."""
    from .plot import pyplot

    plt = pyplot()
    c, van, e = result["config"], result["vanishing"], result["exploding"]
    rem = result.get("remedies")
    layers = np.arange(1, c["depth"] + 2)
    colors = {"sigmoid": "tab:red", "tanh": "tab:orange", "relu": "tab:blue"}
    fig, axes = plt.subplots(2 if rem else 1, 3, figsize=(15, 9 if rem else 4.5), squeeze=False)
    ax = axes[0, 0]
    for a in ACTIVATIONS:
        ax.plot(layers, van[a]["grad"], "o-", color=colors[a], label=f"{a} ||dW||")
        ax.plot(layers, van[a]["delta"], "s--", color=colors[a], alpha=0.6, label=f"{a} ||delta||")
    hidden = f"{c['depth']} hidden layer{'s' if c['depth'] > 1 else ''} of {c['width']}"
    ax.set_title(f"at initialisation, W ~ N(0, 1/fan_in)\n{hidden}")
    ax = axes[0, 1]
    for a in ACTIVATIONS:
        ax.plot(layers, van[a]["grad_norm"], "o-", color=colors[a], label=f"{a} ||(dW, db)||")
        ax.plot(layers, van[a]["delta_norm"], "s--", color=colors[a], alpha=0.6, label=f"{a} ||delta||")
    ax.set_title(f"after {c['epochs']} epochs of SGD(lr={c['lr']:g}) (trainer history)")
    ax = axes[0, 2]
    ax.plot(layers, e["grad"], "o-", color="tab:blue", label="relu ||dW||")
    ax.plot(layers, e["delta"], "s--", color="tab:blue", alpha=0.6, label="relu ||delta||")
    outcome = []
    for r in e["runs"]:
        what = "no clipping" if r["clip_norm"] is None else f"clip_norm={r['clip_norm']:g}"
        losses = r["loss_per_epoch"]
        outcome.append(f"{what}: " + ("diverged" if r["diverged"] else f"loss {losses[0]:.3g} -> {losses[-1]:.3g}"))
    ax.set_title(f"exploding: W ~ N(0, {e['gain'] ** 2:g}/fan_in), SGD(lr={c['lr']:g})\n" + "\n".join(outcome))
    log_axes = list(axes[0])
    if rem:
        remedy_colors = {"plain": "tab:red", "batch_norm": "tab:green", "residual": "tab:purple"}
        activation = c["remedy_activation"]
        for ax, key in ((axes[1, 0], "grad"), (axes[1, 1], "grad_norm")):
            for r in REMEDIES:
                ax.plot(layers, rem[r][key], "o-", color=remedy_colors[r], label=REMEDY_NAMES[r])
            log_axes.append(ax)
        axes[1, 0].set_title(f"remedies, {activation}: ||dW|| at initialisation (same W)")
        axes[1, 1].set_title(
            f"remedies, {activation}: ||(dW, db, gamma, beta)||\nlast of {c['epochs']} epochs of SGD(lr={c['lr']:g})"
        )
        ax = axes[1, 2]
        for r in REMEDIES:
            label = f"{REMEDY_NAMES[r]}: {rem[r]['test_accuracy']:.3f}" + (" (diverged)" if rem[r]["diverged"] else "")
            accuracy = rem[r]["accuracy_per_epoch"]  # the epochs completed
            ax.plot(np.arange(1, len(accuracy) + 1), accuracy, "o-", color=remedy_colors[r], label=label)
        ax.axhline(1 / c["n_out"], color="gray", linestyle=":", label=f"chance 1/{c['n_out']}")
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (held-out rows)")
        ax.set_title(f"remedies, {activation}: test accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in log_axes:
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = input layer)")
        ax.set_xticks(layers)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_ylabel("norm")
    fig.tight_layout()
    try:
        return _files.save_figure(fig, path, dpi=100)  # atomically, as every file fastbp writes
    finally:
        plt.close(fig)
