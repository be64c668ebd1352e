"""Plots of training (extra ``plot``: matplotlib)."""

from ._files import save_figure

__all__ = ["training_curves"]


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("plots need matplotlib: pip install 'fastbp[plot]' (or pip install matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history, path):
    """Write loss curves (training, and validation when present) and validation accuracy to a PNG.

    history: a Trainer history (dict of per-epoch lists). path: output file, written atomically (``.png`` appended
    when it has no extension, as matplotlib does). Returns the path written.
    """
    plt = pyplot()
    epochs = range(1, len(history["loss"]) + 1)
    has_acc = "val_accuracy" in history
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, history["loss"], label="training loss")
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(True, alpha=0.3)
    if has_acc:
        ax = axes[0, 1]
        ax.plot(epochs, history["val_accuracy"], color="tab:green")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=100)  # atomically, as every file fastbp writes
    finally:
        plt.close(fig)
