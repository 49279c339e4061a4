"""Numbers -> pictures. Takes metrics dicts and metric tables, never models."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
# Class names and file names are drawn as plain text: a '$' in a name must not start math mode.
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402


def pyplot():
    """matplotlib.pyplot, headless and with math text off; for modules that draw lazily."""
    return plt


def plot_confusion(metrics: dict, path, title: str | None = None) -> Path:
    """Counts and row-normalised (recall) matrices side by side, class names on both axes."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    classes = metrics["classes"]
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(5.2 * 2 + 1, 4.6 + 0.15 * k))
    for ax, data, sub, fmt in ((axes[0], cm, "counts", "{:.0f}"), (axes[1], norm, "row-normalised (recall)", "{:.2f}")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if data.max() > 0 else 1)
        ax.set_xticks(range(k), classes, rotation=35, ha="right")
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub)
        for i in range(k):
            for j in range(k):
                v = data[i, j]
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=9,
                        color="white" if v > 0.6 * (data.max() or 1) else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    head = title or "Confusion matrix"
    fig.suptitle(f"{head}  (n={metrics.get('n', int(cm.sum()))}, accuracy={metrics.get('accuracy', float('nan')):.4f}, "
                 f"macro-F1={metrics.get('macro_f1', float('nan')):.4f})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_history(metrics_csv) -> dict[str, list[float]]:
    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows if r[k] != ""] for k in (rows[0] if rows else {})}


def plot_curves(metrics_csv, path) -> Path:
    """Loss, accuracy / macro-F1 and learning rate per epoch from a run's metrics.csv."""
    h = read_history(metrics_csv)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ep = h["epoch"]
    axes[0].plot(ep, h["train_loss"], label="train")
    axes[0].plot(ep, h["val_loss"], label="validation")
    axes[0].set_title("loss")
    axes[1].plot(ep, h["train_acc"], label="train accuracy (augmented)")
    axes[1].plot(ep, h["val_acc"], label="validation accuracy")
    axes[1].plot(ep, h["val_macro_f1"], label="validation macro-F1")
    axes[1].set_title("accuracy and macro-F1")
    axes[2].plot(ep, h["lr"])
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax is not axes[2]:
            ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pretrain_loss(history: list[dict], chance: float, path) -> Path:
    """A pretraining run's NT-Xent loss and learning rate per epoch; `chance`: the loss of features
    that tell no cell from another (log(2B - 1) for batches of B)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [r["epoch"] for r in history]
    axes[0].plot(ep, [float(r["loss"]) for r in history], marker="o" if len(ep) < 20 else None, label="NT-Xent loss")
    axes[0].axhline(chance, color="grey", linestyle="--", label=f"chance ({chance:.2f})")
    axes[0].set_title("pretraining loss (lower: a cell's two views are told apart from the others better)")
    axes[0].title.set_fontsize(9)
    axes[0].legend()
    axes[1].plot(ep, [float(r["lr"]) for r in history])
    axes[1].set_title("learning rate (at the epoch's end)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_differential(diff: dict, path, colours: list[str] | None = None) -> Path:
    """The differential as bars of each class's share of the counted cells, with 95% intervals."""
    classes = list(diff["classes"])
    rows = [diff["classes"][c] for c in classes]
    pct = np.array([r["percent"] for r in rows])
    err = np.array([[r["percent"] - r["ci_low"] for r in rows], [r["ci_high"] - r["percent"] for r in rows]])
    fig, ax = plt.subplots(figsize=(1.3 * len(classes) + 2.5, 3.8))
    ax.bar(range(len(classes)), pct, yerr=err, capsize=5, color=colours[:len(classes)] if colours else None,
           edgecolor="#333", linewidth=0.6)
    for i, r in enumerate(rows):
        ax.text(i, r["ci_high"] + 1.5, f"{r['count']}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=20, ha="right")
    ax.set_ylabel("% of counted cells")
    ax.set_ylim(0, min(100, max(10.0, float((pct + err[1]).max()) + 10)))
    ax.set_title(f"differential of {diff['counted']} cells (bars: 95% Wilson interval; number: count)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
