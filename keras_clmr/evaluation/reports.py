"""Result files and tables: results.json, per-tag CSV and plot, training curves, Markdown tables,
the tagger.

Every file is written atomically through ``keras_clmr.io``.
"""

import csv
import io as text_io
import os

import numpy as np

from keras_clmr import io

RESULT_FILES = (
    "results.json",
    "per_tag.csv",
    "per_tag_auc.png",
    "training_curves.png",
    "results.md",
    "tagger.keras",
)


def _percent(value):
    return (
        "n/a"
        if value is None or (isinstance(value, float) and np.isnan(value))
        else f"{100 * value:.2f}"
    )


def markdown_table(rows):
    """A Markdown table of ``[(name, results), ...]`` (AUCs and accuracy in %, as in the papers)."""
    multi = all(r["protocol"].get("multi_label", True) for _, r in rows)
    if multi:
        header = [
            "Model",
            "Evaluation",
            "Labels",
            "ROC-AUC (tag)",
            "PR-AUC (tag)",
            "ROC-AUC (clip)",
            "PR-AUC (clip)",
        ]
        keys = ("roc_auc_tag", "pr_auc_tag", "roc_auc_clip", "pr_auc_clip")
    else:
        header = ["Model", "Evaluation", "Labels", "Accuracy", "ROC-AUC (tag)", "PR-AUC (tag)"]
        keys = ("accuracy", "roc_auc_tag", "pr_auc_tag")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, results in rows:
        labels = f"{100 * results['data']['label_fraction']:g} %"
        lines.append(
            "| "
            + " | ".join(
                [name, results["task"], labels]
                + [_percent(results["metrics"].get(k)) for k in keys]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def cover_markdown_table(rows):
    """A Markdown table of cover-song rows (model, map, mr1, precision_at_10, n_queries)."""
    lines = ["| Model | MAP | MR1 | P@10 | Queries |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['map']:.4f} | {row['mr1']:.2f} | "
            f"{row['precision_at_10']:.4f} | "
            f"{row['n_queries']} |"
        )
    return "\n".join(lines) + "\n"


def per_tag_csv(results):
    buffer = text_io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("tag", "roc_auc", "pr_auc", "test_positives"))
    for row in results["per_tag"]:
        writer.writerow(
            (row["tag"], f"{row['roc_auc']:.6f}", f"{row['pr_auc']:.6f}", row["test_positives"])
        )
    return buffer.getvalue()


def per_tag_figure(results, title=None):
    """The per-tag figure: ROC-AUC and PR-AUC panels, each sorted, with what chance scores.

    ROC-AUC gets the chance line at 0.5; PR-AUC gets each tag's test prevalence (the PR-AUC of
    a random scorer) as a tick. Tags with an undefined AUC go last, marked "n/a". Legends sit
    outside the bars. Returns the matplotlib figure (the caller closes it).
    """
    from keras_clmr.interpret._plotting import pyplot

    plt = pyplot(purpose="per-tag plots")

    rows = results["per_tag"]
    n_test = (results.get("data") or {}).get("n_test_clips")
    figure, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.3 * len(rows) + 3.5), 7.0))
    x = np.arange(len(rows))
    for axis, key, name, colour in (
        (axes[0], "roc_auc", "ROC-AUC", "tab:blue"),
        (axes[1], "pr_auc", "PR-AUC", "tab:orange"),
    ):
        values = np.array([np.nan if r[key] is None else float(r[key]) for r in rows])
        order = sorted(
            range(len(rows)), key=lambda j: (np.isnan(values[j]), -np.nan_to_num(values[j]))
        )
        axis.bar(x, np.nan_to_num(values[order]), 0.7, color=colour, label=name)
        for position, j in enumerate(order):
            if np.isnan(values[j]):
                axis.text(position, 0.02, "n/a", rotation=90, ha="center", fontsize=7)
        if key == "roc_auc":
            axis.axhline(0.5, color="black", linestyle="--", linewidth=1, label="chance (0.5)")
        elif n_test:
            prevalence = [rows[j]["test_positives"] / n_test for j in order]
            axis.scatter(
                x,
                prevalence,
                marker="_",
                s=160,
                color="black",
                zorder=3,
                label="prevalence (chance)",
            )
        axis.set_xticks(x)
        axis.set_xticklabels([rows[j]["tag"] for j in order], rotation=90, fontsize=8)
        axis.set_xlim(-0.6, len(rows) - 0.4)
        axis.set_ylim(0, 1)
        axis.set_ylabel(name)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[0].set_title(title or f"Per-tag AUCs ({results['task']}), sorted")
    figure.tight_layout()
    return figure


def per_tag_plot(results, path, title=None):
    """Write :func:`per_tag_figure` as a PNG, atomically."""
    from keras_clmr.interpret._plotting import save_figure

    save_figure(per_tag_figure(results, title), path, dpi=100)


def _curves(history):
    """The per-epoch series of a probe's history (``train_loss``, ``val_loss``, ...), by name."""
    series = {}
    for key, values in (history or {}).items():
        if isinstance(values, (list, tuple)) and values:
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                series[key] = [float(v) for v in values]
    return series


def training_curves_figure(history, title=None):
    """Loss (train and validation) per epoch, the best validation epoch marked, and any other
    per-epoch series of the history in a second panel. Returns the figure (caller closes it)."""
    from keras_clmr.interpret._plotting import pyplot

    plt = pyplot(purpose="training-curve plots")

    series = _curves(history)
    if not series:
        raise ValueError("The history has no per-epoch series to plot (train_loss, val_loss).")
    losses = {k: v for k, v in series.items() if k.endswith("loss")}
    others = {k: v for k, v in series.items() if k not in losses}
    panels = [p for p in (losses, others) if p]
    figure, axes = plt.subplots(len(panels), 1, figsize=(7.0, 3.2 * len(panels)), squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        for key, values in panel.items():
            axis.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=key)
        axis.set_xlabel("epoch")
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    loss_axis = axes[0, 0]
    loss_axis.set_ylabel("loss")
    best = (history or {}).get("best_epoch")
    if best and losses:
        loss_axis.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
        loss_axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    loss_axis.set_title(title or "Training curves")
    figure.tight_layout()
    return figure


def training_curves_plot(history, path, title=None):
    """Write :func:`training_curves_figure` as a PNG, atomically."""
    from keras_clmr.interpret._plotting import save_figure

    save_figure(training_curves_figure(history, title), path, dpi=100)


def write_results(output_dir, results, tagger=None, name=None):
    """Write results.json, per_tag.csv, per_tag_auc.png, training_curves.png (when the results
    hold a per-epoch history), results.md and (with a tagger) tagger.keras into ``output_dir``;
    every file atomically. Returns the paths written."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {name_: os.path.join(output_dir, name_) for name_ in RESULT_FILES}
    if tagger is None:
        del paths["tagger.keras"]
    if not _curves(results.get("history")):
        del paths["training_curves.png"]
    io.atomic_write_json(paths["results.json"], results, sort_keys=True)
    io.atomic_write_text(paths["per_tag.csv"], per_tag_csv(results))
    per_tag_plot(results, paths["per_tag_auc.png"])
    if "training_curves.png" in paths:
        title = f"Training curves ({results.get('task', 'probe')})"
        training_curves_plot(results["history"], paths["training_curves.png"], title)
    title = name or results["encoder"].get("class_name", "model")
    io.atomic_write_text(paths["results.md"], markdown_table([(title, results)]))
    if tagger is not None:
        io.atomic_save_model(tagger, paths["tagger.keras"])
    return paths


def written_result_files(output_dir):
    """The names of ``RESULT_FILES`` present in ``output_dir``, sorted (what a run wrote)."""
    return sorted(name for name in RESULT_FILES if name in os.listdir(output_dir))


def atomic_write(path, data, mode="w"):
    """Write text (``mode="w"``) or bytes (``"wb"``) atomically; kept for callers of the old name,
    new code calls ``keras_clmr.io.atomic_write_text`` / ``atomic_write_bytes`` directly."""
    if "b" in mode:
        return io.atomic_write_bytes(path, data)
    return io.atomic_write_text(path, data)
