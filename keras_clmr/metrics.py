"""Evaluation metrics as the CLMR and PEMR papers report them (plain NumPy / scikit-learn).

Tagging (CLMR ``clmr/evaluation.py``, thesis): predictions are clip-level scores
[n_clips, n_tags] (mean over a clip's chunks of the per-chunk sigmoid outputs).

* **Tag-wise** ROC-AUC / PR-AUC (ROC-AUC_TAG, PR-AUC_TAG, the numbers in the papers'
  tables): one AUC per tag (column), macro-averaged over tags. PR-AUC is scikit-learn's
  ``average_precision_score``, as in CLMR.
* **Clip-wise** ROC-AUC / PR-AUC: one AUC per clip (row), averaged over clips (CLMR 2.0's
  ``utils/eval.py``).

Undefined AUCs: a tag with no positive (or no negative) example in the evaluated set has no
ROC-AUC, and its PR-AUC is meaningless. scikit-learn returns NaN (or raises, depending on the
version) for ROC-AUC and 0 for AP. The papers' tables are macro means over tags that are
defined (every MTAT tag has positives in the pons2017 test split), so here such tags are
**excluded from both macro averages** and reported as NaN per tag; ``n_tags_evaluated`` and
``undefined_tags`` say which ones were dropped. Clips with no positive (or no negative) tag
are excluded from the clip-wise means in the same way.

Cover-song / version identification (MIREX / Da-TACOS conventions): every item queries all
other items of the collection, ranked by distance (ascending; ties broken by item index so
results are deterministic). Items whose version group has no other member are not used as
queries (they still act as distractors). MAP is the mean over queries of average precision,
MR1 the mean 1-based rank of the first correct answer, P@10 the fraction of correct answers
in the top 10 (denominator ``min(10, n - 1)``).
"""

import warnings

import numpy as np


def _as_2d(name, array):
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be [n_clips, n_tags], got shape {array.shape}.")
    return array


def _check_pair(y_true, y_score):
    y_true = _as_2d("y_true", y_true)
    y_score = _as_2d("y_score", y_score).astype(np.float64)
    if y_true.shape != y_score.shape:
        raise ValueError(
            f"y_true {y_true.shape} and y_score {y_score.shape} must have the same shape."
        )
    if y_true.shape[0] == 0:
        raise ValueError("No clips to evaluate (y_true is empty).")
    if not np.all(np.isfinite(y_score)):
        raise ValueError("y_score contains NaN or inf: check the model's outputs.")
    values = np.unique(y_true)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(f"y_true must be binary (0/1 multi-hot labels), got values {values[:10]}.")
    return y_true.astype(np.int64), y_score


def _aucs_per_column(y_true, y_score):
    """ROC-AUC and AP of each column; NaN where the column has only one class."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    n = y_true.shape[1]
    roc, ap = np.full(n, np.nan), np.full(n, np.nan)
    for j in range(n):
        positives = int(y_true[:, j].sum())
        if positives == 0 or positives == y_true.shape[0]:
            continue
        roc[j] = roc_auc_score(y_true[:, j], y_score[:, j])
        ap[j] = average_precision_score(y_true[:, j], y_score[:, j])
    return roc, ap


def _nanmean(values):
    return float(np.mean(values[~np.isnan(values)])) if np.any(~np.isnan(values)) else float("nan")


def tag_wise_auc(y_true, y_score, tags=None):
    """Per-tag ROC-AUC and PR-AUC and their macro means (ROC-AUC_TAG / PR-AUC_TAG).

    Returns a dict: ``roc_auc``, ``pr_auc`` (macro means over defined tags), ``per_tag_roc_auc``,
    ``per_tag_pr_auc`` (lists, NaN for undefined tags), ``n_tags_evaluated``,
    ``undefined_tags`` (names, or indices when ``tags`` is None).
    """
    y_true, y_score = _check_pair(y_true, y_score)
    if tags is not None and len(tags) != y_true.shape[1]:
        raise ValueError(f"{len(tags)} tag names for {y_true.shape[1]} label columns.")
    roc, ap = _aucs_per_column(y_true, y_score)
    undefined = [int(j) for j in np.flatnonzero(np.isnan(roc))]
    if len(undefined) == y_true.shape[1]:
        warnings.warn(
            "No tag has both positive and negative examples: tag-wise AUCs are undefined (NaN).",
            stacklevel=2,
        )
    return {
        "roc_auc": _nanmean(roc),
        "pr_auc": _nanmean(ap),
        "per_tag_roc_auc": roc.tolist(),
        "per_tag_pr_auc": ap.tolist(),
        "n_tags_evaluated": int(y_true.shape[1] - len(undefined)),
        "undefined_tags": [tags[j] for j in undefined] if tags is not None else undefined,
    }


def clip_wise_auc(y_true, y_score):
    """ROC-AUC and PR-AUC of each clip's ranking of the tags, averaged over clips.

    Returns a dict ``roc_auc``, ``pr_auc``, ``n_clips_evaluated`` (clips with at least one
    positive and one negative tag).
    """
    y_true, y_score = _check_pair(y_true, y_score)
    roc, ap = _aucs_per_column(y_true.T, y_score.T)
    return {
        "roc_auc": _nanmean(roc),
        "pr_auc": _nanmean(ap),
        "n_clips_evaluated": int(np.sum(~np.isnan(roc))),
    }


def accuracy(y_true, y_score):
    """Top-1 accuracy of ``argmax(y_score)``; ``y_true`` is class indices [n] or one-hot [n, C]."""
    y_score = np.asarray(y_score)
    if y_score.ndim != 2:
        raise ValueError(f"y_score must be [n, n_classes], got shape {y_score.shape}.")
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        if y_true.shape != y_score.shape:
            raise ValueError(
                f"y_true {y_true.shape} and y_score {y_score.shape} must have the same shape."
            )
        y_true = np.argmax(y_true, axis=1)
    if y_true.shape[0] != y_score.shape[0] or y_true.shape[0] == 0:
        raise ValueError(
            f"Need the same non-zero number of labels ({y_true.shape[0]}) and scores "
            f"({y_score.shape[0]})."
        )
    return float(np.mean(np.argmax(y_score, axis=1) == y_true))


def tagging_metrics(y_true, y_score, multi_label=True, tags=None):
    """Everything the papers report for a tagging (or single-label) task, as one dict.

    Multi-label: tag-wise and clip-wise AUCs. Single-label: accuracy, plus the tag-wise
    AUCs of the one-hot labels (one-vs-rest), which CLMR also logs for GTZAN.
    """
    y_score = _as_2d("y_score", y_score)
    if multi_label:
        tag = tag_wise_auc(y_true, y_score, tags=tags)
        clip = clip_wise_auc(y_true, y_score)
        return {
            "roc_auc_tag": tag["roc_auc"],
            "pr_auc_tag": tag["pr_auc"],
            "roc_auc_clip": clip["roc_auc"],
            "pr_auc_clip": clip["pr_auc"],
            "n_tags_evaluated": tag["n_tags_evaluated"],
            "undefined_tags": tag["undefined_tags"],
            "n_clips_evaluated": clip["n_clips_evaluated"],
            "per_tag_roc_auc": tag["per_tag_roc_auc"],
            "per_tag_pr_auc": tag["per_tag_pr_auc"],
        }
    y_true = np.asarray(y_true)
    one_hot = y_true if y_true.ndim == 2 else np.eye(y_score.shape[1], dtype=np.int64)[y_true]
    tag = tag_wise_auc(one_hot, y_score, tags=tags)
    return {
        "accuracy": accuracy(y_true, y_score),
        "roc_auc_tag": tag["roc_auc"],
        "pr_auc_tag": tag["pr_auc"],
        "n_tags_evaluated": tag["n_tags_evaluated"],
        "undefined_tags": tag["undefined_tags"],
        "per_tag_roc_auc": tag["per_tag_roc_auc"],
        "per_tag_pr_auc": tag["per_tag_pr_auc"],
    }


# ----------------------------------------------------------------------------- cover songs


def cosine_distance_matrix(embeddings):
    """Pairwise cosine distances ``1 - cos`` of the rows of ``embeddings`` [n, d] (float64)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [n_items, dim], got shape {x.shape}.")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    return 1.0 - x @ x.T


def cover_song_metrics(distances, groups, top_k=10):
    """MAP, MR1 and P@k of version identification over a square distance matrix.

    Args:
        distances: [n, n], smaller = more similar; the diagonal is ignored.
        groups: [n] version-group ids (items of the same group are versions of one work).
        top_k: k of the precision at k (10 as in the PEMR paper and MIREX).

    Returns a dict ``map``, ``mr1``, ``precision_at_10`` (key follows ``top_k``),
    ``n_queries``, ``n_items``.
    """
    d = np.asarray(distances, dtype=np.float64)
    groups = np.asarray(groups)
    n = d.shape[0] if d.ndim == 2 else -1
    if d.ndim != 2 or d.shape[1] != n:
        raise ValueError(f"distances must be a square [n, n] matrix, got shape {d.shape}.")
    if groups.shape != (n,):
        raise ValueError(f"groups must have one id per item ({n}), got shape {groups.shape}.")
    if n < 2:
        raise ValueError("Need at least two items for version identification.")
    if np.any(np.isnan(d)):
        raise ValueError("distances contain NaN: check the embeddings (all-zero vectors?).")
    k = min(int(top_k), n - 1)
    aps, first_ranks, precisions = [], [], []
    for q in range(n):
        others = np.delete(np.arange(n), q)
        relevant = groups[others] == groups[q]
        if not relevant.any():
            continue
        # Stable sort on distance: ties keep item-index order, so results are deterministic.
        order = np.argsort(d[q, others], kind="stable")
        hits = relevant[order]
        hit_ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, len(hit_ranks) + 1) / hit_ranks)))
        first_ranks.append(float(hit_ranks[0]))
        precisions.append(float(hits[:k].sum()) / k)
    if not aps:
        raise ValueError(
            "No item has another version in the collection: every group is a singleton, "
            "so there is nothing to identify. Check the group ids."
        )
    return {
        "map": float(np.mean(aps)),
        "mr1": float(np.mean(first_ranks)),
        f"precision_at_{int(top_k)}": float(np.mean(precisions)),
        "n_queries": len(aps),
        "n_items": int(n),
    }
