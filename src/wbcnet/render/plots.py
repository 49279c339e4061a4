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


def plot_coverage(curve: dict, path, title: str | None = None) -> Path:
    """Accuracy against coverage, with the accuracy at full coverage as a reference line."""
    plt = pyplot()

    cov, acc = np.asarray(curve["coverage"]), np.asarray(curve["accuracy"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(cov, acc, color="#4C72B0", lw=2, label="accuracy on the cells kept")
    if len(acc):
        ax.axhline(acc[-1], color="grey", ls="--", lw=1, label=f"all cells: {acc[-1]:.4f}")
        for c, marker in ((0.9, "o"), (0.8, "s")):
            i = min(int(np.searchsorted(cov, c - 1e-12)), len(cov) - 1)
            ax.plot(cov[i], acc[i], marker, color="#DD8452", ms=7,
                    label=f"{cov[i]:.0%} kept: {acc[i]:.4f} (confidence >= {curve['threshold'][i]:.3f})")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(max(0.0, (acc.min() if len(acc) else 0) - 0.05), 1.005)
    ax.set_xlabel("coverage (fraction of cells the model answers, most confident first)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Selective prediction: refer the least confident cells")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class(metrics: dict, path, title: str | None = None) -> Path:
    """Precision, recall and F1 per class as grouped bars, bootstrap intervals as error bars
    (drawn only where metrics['ci'] has them)."""
    plt = pyplot()

    classes, per_class = metrics["classes"], metrics["per_class"]
    ci = metrics.get("ci", {}).get("per_class", {})
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.5 * len(classes) + 2), 4.4))
    for j, (m, color) in enumerate((("precision", "#4C72B0"), ("recall", "#55A868"), ("f1", "#C44E52"))):
        values = np.array([per_class[c][m] for c in classes])
        lo_hi = [ci.get(c, {}).get(m) for c in classes]
        err = np.array([[v - iv[0], iv[1] - v] if iv else [0.0, 0.0] for v, iv in zip(values, lo_hi)]).T
        ax.bar(x + (j - 1) * 0.27, values, 0.27, color=color, label=m if m != "f1" else "F1",
               yerr=np.clip(err, 0, None), capsize=3, error_kw={"elinewidth": 1, "ecolor": "black"})
    ax.set_xticks(x, [f"{c}\n(n={per_class[c]['support']})" for c in classes])
    ax.set_ylim(0, 1.17)  # headroom for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score")
    n_res = metrics.get("ci", {}).get("n_resamples")
    ax.set_title(title or ("Per-class precision, recall, F1" +
                           (f" (95% bootstrap CI, {n_res} resamples)" if n_res else "")))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(panels: list[tuple[str, dict]], path) -> Path:
    """One reliability diagram per (title, reliability_bins(...)) side by side: accuracy per
    confidence bin against the diagonal, the gap shaded, and how many cells fall in each bin."""
    plt = pyplot()

    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for col, (title, b) in enumerate(panels):
        edges = np.asarray(b["edges"])
        width = np.diff(edges)
        acc, conf = np.asarray(b["accuracy"], dtype=float), np.asarray(b["confidence"], dtype=float)
        has = np.asarray(b["count"]) > 0
        ax = axes[0, col]
        ax.bar(edges[:-1][has], acc[has], width[has], align="edge", color="#4C72B0", edgecolor="white",
               label="accuracy")
        # The gap between what the model claims (confidence) and what it achieves (accuracy).
        lo, hi = np.minimum(acc, conf)[has], np.maximum(acc, conf)[has]
        ax.bar(edges[:-1][has], hi - lo, width[has], bottom=lo, align="edge", color="#DD8452", alpha=0.45,
               edgecolor="#DD8452", hatch="//", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}\nECE = {b['ece']:.4f}")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        hist = axes[1, col]
        hist.bar(edges[:-1], b["count"], width, align="edge", color="#8C8C8C", edgecolor="white")
        hist.set_xlabel("confidence (top-label probability)")
        hist.set_ylabel("cells")
        hist.set_yscale("symlog")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
