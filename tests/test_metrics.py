"""Tagging and cover-song metrics against scikit-learn, an independent NumPy reference and
hand-worked examples."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from keras_clmr import metrics


def _reference_roc_auc(y, s):
    """Mann-Whitney U in float64: P(score_pos > score_neg) + 0.5 P(tie)."""
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _reference_average_precision(y, s):
    """Step-wise AP with ties grouped into one threshold (scikit-learn's definition)."""
    total, ap, prev_recall = y.sum(), 0.0, 0.0
    for threshold in np.unique(s)[::-1]:
        predicted = s >= threshold
        tp = np.sum(y[predicted])
        recall, precision = tp / total, tp / predicted.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return float(ap)


def test_tag_wise_matches_sklearn_and_reference_on_random_data():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 7)) < 0.3).astype(int)
    y[0], y[1] = 1, 0  # every tag has positives and negatives
    s = rng.random((60, 7)) + 0.5 * y  # informative but imperfect
    s[:, 3] = np.round(s[:, 3], 1)  # plenty of ties in one column
    out = metrics.tag_wise_auc(y, s)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y, s, average="macro"), abs=1e-12)
    assert out["pr_auc"] == pytest.approx(average_precision_score(y, s, average="macro"), abs=1e-12)
    for j in range(7):
        assert out["per_tag_roc_auc"][j] == pytest.approx(
            _reference_roc_auc(y[:, j], s[:, j]), abs=1e-12
        )
        assert out["per_tag_pr_auc"][j] == pytest.approx(
            _reference_average_precision(y[:, j], s[:, j]), abs=1e-12
        )
    assert out["n_tags_evaluated"] == 7 and out["undefined_tags"] == []


def test_clip_wise_matches_per_row_sklearn():
    rng = np.random.default_rng(1)
    y = (rng.random((20, 9)) < 0.4).astype(int)
    y[:, 0], y[:, 1] = 1, 0
    y[5] = 0  # a clip with no positive tag: excluded
    s = rng.random((20, 9)) + 0.3 * y
    out = metrics.clip_wise_auc(y, s)
    rows = [i for i in range(20) if i != 5]
    assert out["n_clips_evaluated"] == 19
    assert out["roc_auc"] == pytest.approx(
        np.mean([roc_auc_score(y[i], s[i]) for i in rows]), abs=1e-12
    )
    assert out["pr_auc"] == pytest.approx(
        np.mean([average_precision_score(y[i], s[i]) for i in rows]), abs=1e-12
    )


def test_hand_worked_perfect_reversed_ties_and_tag_without_positives():
    y = np.array([[1, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    s = np.array(
        [
            [0.9, 0.1, 0.5, 0.3],
            [0.2, 0.8, 0.5, 0.1],
            [0.8, 0.7, 0.5, 0.2],
            [0.1, 0.2, 0.5, 0.4],
        ]
    )
    # tag 0: positives rank 1 and 2 -> perfect: ROC 1, AP 1
    # tag 1: positives (0.1, 0.2) below negatives (0.8, 0.7) -> reversed: ROC 0, AP (1/3 + 2/4) / 2
    # tag 2: all scores tied -> ROC 0.5, AP = prevalence 0.5
    # tag 3: no positives -> undefined, excluded from the macro mean
    out = metrics.tag_wise_auc(y, s, tags=["perfect", "reversed", "tied", "empty"])
    assert out["per_tag_roc_auc"][:3] == pytest.approx([1.0, 0.0, 0.5])
    assert out["per_tag_pr_auc"][:3] == pytest.approx([1.0, (1 / 3 + 2 / 4) / 2, 0.5])
    assert np.isnan(out["per_tag_roc_auc"][3]) and np.isnan(out["per_tag_pr_auc"][3])
    assert out["undefined_tags"] == ["empty"] and out["n_tags_evaluated"] == 3
    assert out["roc_auc"] == pytest.approx(0.5)
    assert out["pr_auc"] == pytest.approx((1.0 + 5 / 12 + 0.5) / 3)


def test_all_positive_tag_is_undefined_and_bad_inputs_raise():
    y = np.array([[1, 1], [1, 0], [1, 1]])
    out = metrics.tag_wise_auc(y, np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.8]]))
    assert out["undefined_tags"] == [0] and out["roc_auc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        metrics.tag_wise_auc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="binary"):
        metrics.tag_wise_auc(np.array([[2, 0], [0, 1]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.tag_wise_auc(np.array([[1], [0]]), np.array([[np.nan], [0.0]]))


def test_accuracy_and_single_label_metrics():
    s = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3], [0.5, 0.4, 0.1]])
    assert metrics.accuracy([0, 2, 0, 0], s) == pytest.approx(0.75)
    assert metrics.accuracy(np.eye(3)[[0, 2, 1, 1]], s) == pytest.approx(0.75)
    out = metrics.tagging_metrics(np.array([0, 2, 1, 1]), s, multi_label=False)
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["roc_auc_tag"] == pytest.approx(
        roc_auc_score(np.eye(3)[[0, 2, 1, 1]], s, average="macro")
    )


def test_cover_song_metrics_hand_built_matrix():
    groups = ["a", "a", "a", "b", "b"]
    d = np.array(
        [
            [0.0, 0.1, 0.5, 0.2, 0.9],  # ranks 1,3 of the versions: AP (1 + 2/3)/2, R1 1, P 2/4
            [0.9, 0.0, 0.8, 0.1, 0.2],  # versions 0,2 at ranks 4,3: AP (1/3 + 2/4)/2, R1 3
            [0.3, 0.4, 0.0, 0.1, 0.2],  # versions at ranks 3,4: AP 5/12, R1 3
            [0.5, 0.5, 0.5, 0.0, 0.1],  # version 4 first: AP 1, R1 1, P 1/4
            [0.1, 0.2, 0.3, 0.4, 0.0],  # version 3 last: AP 1/4, R1 4, P 1/4
        ]
    )
    out = metrics.cover_song_metrics(d, groups)
    assert out["map"] == pytest.approx((5 / 6 + 5 / 12 + 5 / 12 + 1 + 1 / 4) / 5)
    assert out["mr1"] == pytest.approx((1 + 3 + 3 + 1 + 4) / 5)
    assert out["precision_at_10"] == pytest.approx((0.5 + 0.5 + 0.5 + 0.25 + 0.25) / 5)
    assert out["n_queries"] == 5


def test_cover_song_metrics_perfect_clusters_singletons_and_ties():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    groups = np.repeat(np.arange(4), 3)
    embeddings = centres[groups] + 0.01 * rng.standard_normal((12, 16))
    embeddings = np.concatenate([embeddings, rng.standard_normal((2, 16))])  # two singletons
    groups = np.concatenate([groups, [10, 11]])
    out = metrics.cover_song_metrics(metrics.cosine_distance_matrix(embeddings), groups)
    assert out["map"] == pytest.approx(1.0) and out["mr1"] == pytest.approx(1.0)
    assert out["precision_at_10"] == pytest.approx(
        2 / 10
    )  # 2 versions in a top 10 (n - 1 = 13 >= 10)
    assert out["n_queries"] == 12 and out["n_items"] == 14
    # All distances tied: the stable order ranks items by index.
    tied = metrics.cover_song_metrics(np.zeros((3, 3)), [0, 1, 0])
    # query 0: others [1, 2] -> version at rank 2; query 2: others [0, 1] -> rank 1
    assert tied["mr1"] == pytest.approx(1.5) and tied["map"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="singleton"):
        metrics.cover_song_metrics(np.zeros((3, 3)), [0, 1, 2])
    with pytest.raises(ValueError, match="square"):
        metrics.cover_song_metrics(np.zeros((3, 2)), [0, 0, 1])


def test_cosine_distance_matrix():
    d = metrics.cosine_distance_matrix([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    np.testing.assert_allclose(d[0], [0.0, 0.0, 1.0, 2.0], atol=1e-12)
