"""Downstream evaluation as the CLMR / PEMR papers do it: probes, fine-tuning, the supervised
baseline, clip-level testing, cover-song identification and result files.

- ``data``: in-memory ``ClipSet`` / prepared ``PreparedSplit``, splits, label fractions, crops;
- ``encoders``: the encoder under test (checkpoint, preset or random) and its identity record;
- ``features``: probe features, per-chunk outputs, clip-level scores (mean over chunks);
- ``fitting``: training shared by probes and the supervised baseline, results records;
- ``probe``: linear / MLP probes and fine-tuning; ``supervised``: CLMR's supervised baseline;
- ``cover``: cover-song identification; ``reports``: result files and Markdown tables.
"""

from keras_clmr.evaluation.cover import cover_song_eval, demo_cover_set, load_cover_csv
from keras_clmr.evaluation.data import (
    VALID_SPLIT_NAMES,
    ClipSet,
    CropBatches,
    PreparedSplit,
    demo_splits,
    label_fraction_indices,
    load_splits,
    prepared_splits,
    random_crops,
)
from keras_clmr.evaluation.encoders import describe_encoder, load_encoder, random_encoder
from keras_clmr.evaluation.features import (
    chunk_outputs,
    clip_embeddings,
    embed_crops,
    frozen_clip_scores,
    predict_clips,
)
from keras_clmr.evaluation.fitting import fit_end_to_end
from keras_clmr.evaluation.probe import LINEAR_EVAL_DEFAULTS, fit_head, linear_probe, train_probe
from keras_clmr.evaluation.reports import (
    RESULT_FILES,
    atomic_write,
    cover_markdown_table,
    markdown_table,
    per_tag_csv,
    per_tag_plot,
    write_results,
    written_result_files,
)
from keras_clmr.evaluation.supervised import SUPERVISED_DEFAULTS, train_supervised
from keras_clmr.io import to_jsonable as _jsonable  # noqa: F401 (old name used by commands/cover)
from keras_clmr.models.tagger import non_overlapping_chunks

__all__ = [
    "ClipSet",
    "PreparedSplit",
    "load_splits",
    "demo_splits",
    "demo_cover_set",
    "prepared_splits",
    "label_fraction_indices",
    "random_crops",
    "embed_crops",
    "clip_embeddings",
    "predict_clips",
    "frozen_clip_scores",
    "fit_head",
    "fit_end_to_end",
    "train_probe",
    "linear_probe",
    "train_supervised",
    "cover_song_eval",
    "load_cover_csv",
    "load_encoder",
    "random_encoder",
    "describe_encoder",
    "markdown_table",
    "cover_markdown_table",
    "write_results",
    "atomic_write",
    "non_overlapping_chunks",
    "CropBatches",
    "LINEAR_EVAL_DEFAULTS",
    "RESULT_FILES",
    "SUPERVISED_DEFAULTS",
    "VALID_SPLIT_NAMES",
    "chunk_outputs",
    "per_tag_csv",
    "per_tag_plot",
    "written_result_files",
]
