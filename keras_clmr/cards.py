"""The one model-card renderer: a Hugging Face ``README.md`` and a ``model.json`` sidecar.

Pure functions over a preset's metadata (``describe_metadata``) or a registry entry
(``describe_registry``): nothing here reads or writes files, so ``keras_clmr.hub`` can render
the default card of ``save_preset`` and ``keras_clmr.export.card`` can write cards into
folders. The YAML goes through ``huggingface_hub.ModelCardData`` (library_name, license, tags,
datasets, pipeline_tag and a ``model-index`` from the original authors' published scores in
the registry and keras_clmr's own ``results.json`` files). Sections: the model, how it was
trained (with the parity figures of a conversion), how to load it (Python, ONNX), evaluation
with its protocol, limitations and deviations from the original, citation.
"""

import json
import os

from keras_clmr import presets

CARD_FILE = "README.md"
MODEL_JSON = "model.json"
# File names of a preset folder (keras_clmr.hub.folder writes them).
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"

CITATIONS = {
    "clmr": """@inproceedings{spijkervet2021contrastive,
  title     = {Contrastive Learning of Musical Representations},
  author    = {Spijkervet, Janne and Burgoyne, John Ashley},
  booktitle = {Proceedings of the 22nd International Society for Music Information Retrieval Conference (ISMIR)},
  year      = {2021},
  eprint    = {2103.09410},
  archivePrefix = {arXiv}
}""",  # noqa: E501
    "samplecnn": """@inproceedings{lee2017samplecnn,
  title     = {Sample-level Deep Convolutional Neural Networks for Music Auto-tagging Using Raw Waveforms},
  author    = {Lee, Jongpil and Park, Jiyoung and Kim, Keunhyoung Luke and Nam, Juhan},
  booktitle = {Proceedings of the 14th Sound and Music Computing Conference (SMC)},
  year      = {2017},
  eprint    = {1703.01789},
  archivePrefix = {arXiv}
}""",  # noqa: E501
    "pemr": """@inproceedings{yao2022pemr,
  title     = {Contrastive Learning with Positive-Negative Frame Mask for Music Representation},
  author    = {Yao, Dong and others},
  booktitle = {Proceedings of the ACM Web Conference 2022 (WWW)},
  year      = {2022},
  eprint    = {2203.09129},
  archivePrefix = {arXiv}
}""",
    "cpc": """@article{oord2018cpc,
  title   = {Representation Learning with Contrastive Predictive Coding},
  author  = {van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  journal = {arXiv preprint arXiv:1807.03748},
  year    = {2018}
}""",
    "musicnn": """@inproceedings{pons2019musicnn,
  title     = {musicnn: Pre-trained Convolutional Neural Networks for Music Audio Tagging},
  author    = {Pons, Jordi and Serra, Xavier},
  booktitle = {Late-Breaking/Demo Session of the 20th International Society for Music Information Retrieval Conference (ISMIR)},
  year      = {2019},
  eprint    = {1909.06654},
  archivePrefix = {arXiv}
}""",  # noqa: E501
}

_EXPORT_NOTE = (
    "The ONNX export folds each BatchNorm into its convolution (exact algebra, checked against the "
    "Keras model); exports are float32 only."
)

ARCHITECTURES = {
    "SampleCNN": {
        "family": "clmr",
        "embedding_dim": 512,
        "citations": ("clmr", "samplecnn"),
        "what": (
            "SampleCNN (Lee et al. 2017) on raw waveforms, as used by CLMR (Spijkervet & Burgoyne "
            "2021): a "
            "stride-3 stem convolution, nine Conv1D(3)-BatchNorm-ReLU-MaxPool(3) blocks and a "
            "final conv "
            "block (128 to 512 channels), giving one 512-d embedding per window."
        ),
        "limitations": (
            "Input must be mono audio at the model's sample rate, float32 in [-1, 1]; longer audio "
            "is cut into "
            "non-overlapping windows (`keras_clmr.embed`/`tag` do this; a remainder shorter than a "
            "window is "
            "dropped, a clip shorter than one window is zero-padded with a warning).",
            "Decoding and resampling use soundfile/ffmpeg and soxr; CLMR used torchaudio/ffmpeg. "
            "Inputs, and so "
            "outputs, can differ slightly from the original pipeline's on the same file.",
            "Published scores are the CLMR authors' figures (MTAT, their protocol); keras_clmr has "
            "not re-measured "
            "them unless a keras_clmr result is listed.",
            "Trained on MagnaTagATune: 50 crowd-sourced tags with a Western pop/rock/classical "
            "bias; "
            "tags such as 'female vocal' vs 'woman' overlap.",
        ),
    },
    "FCN": {
        "family": "pemr",
        "embedding_dim": 512,
        "citations": ("pemr", "clmr"),
        "what": (
            "PEMR's encoder (Yao et al. 2022): a torchaudio-exact log-mel frontend (n_fft 256, hop "
            "128, "
            "128 mels -> 128 x 462 frames per 59049-sample window), BatchNorm over the spectrogram "
            "and four "
            "Conv2D(3x3)-BatchNorm-ReLU-MaxPool blocks (64/128/128/128 channels), flattened in "
            "PyTorch's "
            "(channel, freq, time) order to 512-d."
        ),
        "limitations": (
            "As in the official code, the mel filterbank is built for 16 kHz (torchaudio's "
            "default) although the "
            "audio is 22050 Hz; kept for checkpoint compatibility. With 129 FFT bins some of the "
            "128 mel filters "
            "are empty.",
            "Encoder only: the PEMR authors released no tagging head, and no published PEMR scores "
            "were verified.",
            "Input must be mono 22050 Hz audio in windows of 59049 samples.",
        ),
    },
    "CPCEncoder": {
        "family": "cpc",
        "embedding_dim": 256,
        "citations": ("cpc", "clmr"),
        "what": (
            "CPC (van den Oord et al. 2018) on raw waveforms as the CLMR thesis trained it: "
            "strided Conv1D+ReLU blocks (music configuration: strides 5,3,2,2,2,2,2, 512 "
            "channels) give latents z_t, a GRU gives context states c_t; the clip embedding is "
            "c_t averaged over time, as the original's linear evaluation."
        ),
        "limitations": (
            "Input must be mono audio at the model's sample rate, in windows of the model's "
            "input length.",
            "No CPC music weights were released by the CLMR authors: a CPC preset is trained or "
            "converted locally; scores quoted from the thesis are the authors', not this model's.",
        ),
    },
    "Musicnn": {
        "family": "musicnn",
        "embedding_dim": 200,
        "citations": ("musicnn",),
        "what": (
            "musicnn (Pons & Serra 2019) ported to Keras 3: a 16 kHz log-mel frontend (librosa "
            "conventions, "
            "log10(1 + 10000 mel)) and musically motivated CNN front/mid/back ends, or its "
            "VGG-like baseline; "
            "converted from the musicnn 0.1.0 wheel with parity against the original TF1 graph."
        ),
        "limitations": (
            "Input must be mono 16 kHz audio, in 3 s windows.",
            "The mel power is rounded to float16 before the log, as musicnn's own input pipeline "
            "did; switch it off "
            "(`float16_rounding=False`) only for new training.",
            "Scores are those reported by the musicnn authors (experiment.result), not re-measured "
            "by keras_clmr.",
            "Weights are licensed by their authors (ISC); check the musicnn repository before "
            "commercial use.",
        ),
    },
}

HOMEPAGES = {
    "clmr": "https://github.com/Spijkervet/CLMR",
    "pemr": "https://github.com/yaoodng7/PEMR",
    "musicnn": "https://github.com/jordipons/musicnn",
}

DATASETS = {
    "MTAT": ("magnatagatune", "MagnaTagATune"),
    "MSD": ("million-song-dataset", "Million Song Dataset"),
    "GTZAN": ("gtzan", "GTZAN"),
    "demo": ("keras-clmr-demo", "keras_clmr synthetic demo corpus"),
}

METRICS = {  # results.json metric key -> (metric_type, name)
    "roc_auc_tag": ("roc_auc", "ROC-AUC, tag-wise macro (%)"),
    "pr_auc_tag": ("pr_auc", "PR-AUC, tag-wise macro (%)"),
    "roc_auc_clip": ("roc_auc", "ROC-AUC, clip-wise macro (%)"),
    "pr_auc_clip": ("pr_auc", "PR-AUC, clip-wise macro (%)"),
    "accuracy": ("accuracy", "Accuracy (%)"),
}


REPORTED = "reported by the original authors (not re-measured by keras_clmr)"
MEASURED = "measured by keras_clmr (results.json)"


class ModelCardError(ValueError):
    """Inputs a card cannot be rendered from (missing metadata, unreadable results.json)."""


# ------------------------------------------------------------------------------- what a model is


def backbone_class(metadata, config=None):
    """The backbone class of a stored model (a MusicTagger -> its backbone's class)."""
    if metadata.get("class_name") != "MusicTagger" or config is None:
        return metadata.get("class_name")
    try:
        return config["config"]["backbone"]["class_name"]
    except (KeyError, TypeError):
        return "MusicTagger"


def registry_entry(metadata, architecture=None):
    """The registry preset a stored model is a copy of (same name and architecture), else None."""
    name = metadata.get("name")
    if not name or name not in presets.preset_names():
        return None
    preset = presets.get_preset(name)
    if architecture and preset.architecture != architecture:
        return None
    return preset


def describe_metadata(metadata, config=None, exports=()):
    """Card inputs of a preset: its metadata.json, the backbone class and which exports it has.

    What a re-rendered card must keep comes from the metadata: a copy of a registry preset
    keeps the registry's name and license, the authors' published scores
    (``evaluation.reported_scores``) and a converted model its conversion figures.
    """
    info = dict(metadata)
    info["architecture"] = backbone_class(metadata, config)
    info["has_onnx"] = "onnx" in exports
    info["has_savedmodel"] = "savedmodel" in exports
    info["parameter_split"] = parameter_split(config)
    registry = registry_entry(metadata, info["architecture"])
    if registry is not None:
        info.setdefault("registry_name", registry.name)
        info["license"] = metadata.get("license") or registry.license
    evaluation = metadata.get("evaluation") if isinstance(metadata.get("evaluation"), dict) else {}
    reported = (evaluation.get("reported_scores") or {}).get("scores")
    if reported:
        info["reported_scores"] = list(reported)
    if evaluation.get("conversion") and metadata.get("source_checkpoint"):
        info["conversion"] = {
            **evaluation["conversion"],
            "converted_from": metadata["source_checkpoint"],
        }
    return info


def _split(model):
    """(trainable, non-trainable) counts of ``model`` with every layer trainable: what stays
    non-trainable are BatchNorm's moving statistics (Keras' "Non-trainable params")."""
    import math

    model.trainable = True
    count = lambda weights: sum(math.prod(w.shape) for w in weights)  # noqa: E731
    return int(count(model.trainable_weights)), int(count(model.non_trainable_weights))


def parameter_split(config):
    """(trainable, non-trainable) parameters of the model ``config`` (a preset's config.json)
    describes, built without weights; None when it cannot be built."""
    if not isinstance(config, dict) or "class_name" not in config:
        return None
    try:
        import keras

        import keras_clmr.models  # noqa: F401  (registers the classes)

        return _split(keras.saving.deserialize_keras_object(config))
    except Exception:  # noqa: BLE001 (a card renders without the split)
        return None


def registry_parameter_split(preset, task):
    """(trainable, non-trainable) parameters of a registry preset's Keras model (its
    architecture built without weights, plus the 50-tag head for ``task="tag"``)."""
    from keras_clmr import models

    builders = {
        "SampleCNN": lambda: models.SampleCNN.for_sample_rate(preset.sample_rate),
        "FCN": lambda: models.FCN(sample_rate=preset.sample_rate),
        "Musicnn": lambda: models.Musicnn(
            architecture="vgg" if preset.name.startswith("vgg") else "musicnn"
        ),
    }
    if preset.architecture not in builders:
        return None
    backbone = builders[preset.architecture]()
    if not backbone.built:
        backbone.build((None, preset.input_samples))
    trainable, frozen = _split(backbone)
    if task == "tag":
        trainable += backbone.embedding_dim * 50 + 50  # Dense(50) on the embedding
    return trainable, frozen


def parameters_text(info):
    """The card's parameter figure: trainable + non-trainable when the split is known."""
    split = info.get("parameter_split")
    if not split:
        total = info.get("parameter_count")
        return "-" if total is None else f"{total:,} (trainable and non-trainable)"
    trainable, frozen = split
    return (
        f"{trainable + frozen:,} = {trainable:,} trainable + {frozen:,} non-trainable "
        "(BatchNorm moving statistics)"
    )


def head_classes(info):
    """The tag names of a tagger's head (``tag_i`` when only the count is known), else None."""
    if info.get("task") != "tag":
        return None
    if info.get("tags"):
        return [str(t) for t in info["tags"]]
    count = info.get("num_classes")
    return [f"tag_{i}" for i in range(int(count))] if count else None


def check_results_match(info, result):
    """Refuse a results.json whose tags are not the tagger's: it evaluated another head.

    An encoder's card accepts any probe's results (they evaluate the embeddings); a tagger's
    card only results over its own classes, in its order.
    """
    classes = head_classes(info)
    per_tag = result.get("per_tag") or []
    measured = [str(row.get("tag")) for row in per_tag if isinstance(row, dict)]
    if classes is None or not measured:
        return
    if measured != classes:
        differ = sorted(set(measured) ^ set(classes))[:5]
        raise ModelCardError(
            f"{result.get('path', 'results.json')} evaluates {len(measured)} classes "
            f"({', '.join(measured[:4])}{' ...' if len(measured) > 4 else ''}) but this model's "
            f"head has {len(classes)} ({', '.join(classes[:4])}"
            f"{' ...' if len(classes) > 4 else ''})"
            + (f"; they differ in {differ}" if len(measured) == len(classes) else "")
            + ". Pass the results of an evaluation of this model's own head, or card the "
            "encoder (task embed) with probe results."
        )


def describe_registry(name, task):
    """Card inputs of a registry preset (no weights needed): what the registry knows."""
    preset = presets.get_preset(name)
    stored_task = (
        "tag"
        if (task == "tag" or preset.handles.get("embed") == preset.handles.get("tag"))
        else "embed"
    )
    if stored_task not in preset.tasks:
        raise ModelCardError(f"Preset {name!r} has no {task!r} variant.")
    arch = ARCHITECTURES.get(preset.architecture, {})
    split = registry_parameter_split(preset, stored_task)
    tags = None
    if stored_task == "tag" and preset.architecture == "SampleCNN":
        from keras_clmr.data.datasets import MTAT_TAGS

        tags = list(MTAT_TAGS)
    return {
        "name": name
        if stored_task == "embed" or preset.handles.get("embed") == preset.handles.get("tag")
        else f"{name}-tagger",
        "registry_name": name,
        "description": preset.description,
        "class_name": "MusicTagger" if stored_task == "tag" else preset.architecture,
        "architecture": preset.architecture,
        "task": stored_task,
        # All parameters, as count_params() of the preset's Keras model (the registry's figure
        # when the architecture is unknown here).
        "parameter_count": sum(split) if split else preset.params.get(stored_task),
        "parameter_split": split,
        "sample_rate": preset.sample_rate,
        "input_samples": preset.input_samples,
        "embedding_dim": arch.get("embedding_dim"),
        "num_classes": 50 if stored_task == "tag" else None,
        "tags": tags,
        "source_checkpoint": {"url": preset.source.get(stored_task)}
        if preset.source.get(stored_task)
        else None,
        "license": preset.license,
        "has_onnx": False,
        "has_savedmodel": False,
    }


def _dataset(name):
    if name in DATASETS:
        return DATASETS[name]
    slug = "".join(c if c.isalnum() else "-" for c in str(name).lower()).strip("-") or "unknown"
    return slug, str(name)


def eval_results(info, registry=None, results=(), scores=None):
    """``EvalResult``s: published scores (``scores``, else the registry's) and results.json."""
    from huggingface_hub import EvalResult

    out = []
    task_type, task_name = "audio-classification", "Music auto-tagging"
    published = scores if scores is not None else (registry.scores if registry is not None else ())
    architecture = registry.architecture if registry is not None else info.get("architecture")
    family = ARCHITECTURES.get(architecture, {}).get("family")
    for score in published:
        dataset_type, dataset_name = _dataset(score["dataset"])
        out.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                metric_type=score["metric"].lower().replace("-", "_"),
                metric_name=f"{score['metric']}, tag-wise macro (%), {score['head']} head",
                metric_value=score["value"],
                verified=False,
                source_name=REPORTED,
                source_url=HOMEPAGES.get(family, "https://github.com/Spijkervet/CLMR"),
            )
        )
    for result in results:
        dataset_type, dataset_name = _dataset(result["dataset"])
        for key, (metric_type, metric_name) in METRICS.items():
            value = result["metrics"].get(key)
            if value is None:
                continue
            out.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    metric_type=metric_type,
                    metric_name=f"{metric_name}, {result.get('task', 'probe')}",
                    metric_value=round(100.0 * float(value), 2),
                    verified=False,
                )
            )
    return out


# ------------------------------------------------------------------------------- rendering


def model_json(info):
    """The machine-readable sidecar: classes, rate, input samples, I/O names and shapes, files."""
    samples = info.get("input_samples")
    rate = info.get("sample_rate")
    tagger = info.get("task") == "tag"
    classes = info.get("tags")
    num_classes = len(classes) if classes else info.get("num_classes")
    outputs = [
        {"name": "embedding", "shape": ["batch", info.get("embedding_dim")], "dtype": "float32"}
    ]
    if tagger:
        outputs.append(
            {
                "name": "tags",
                "shape": ["batch", num_classes],
                "dtype": "float32",
                "activation": "sigmoid (independent per-tag probabilities)",
            }
        )
    exports = info.get("exports") or {}
    files = {"keras_config": CONFIG_FILE, "keras_weights": WEIGHTS_FILE}
    if info.get("has_onnx") or "onnx" in exports:
        files["onnx"] = "model.onnx"
    if info.get("has_savedmodel") or "savedmodel" in exports:
        files["savedmodel"] = "saved_model"
    return {
        "schema": "keras_clmr.model/1",
        "name": info.get("name"),
        "architecture": info.get("architecture"),
        "class_name": info.get("class_name"),
        "task": info.get("task"),
        "sample_rate": rate,
        "input_samples": samples,
        "window_seconds": round(samples / rate, 4) if samples and rate else None,
        "channels": 1,
        "input": {
            "name": "audio",
            "shape": ["batch", samples],
            "dtype": "float32",
            "range": [-1.0, 1.0],
        },
        "outputs": outputs,
        "classes": list(classes) if classes else None,
        "num_classes": num_classes if tagger else None,
        "preprocessing": (
            f"decode, mix to mono, resample to {rate} Hz, float32 in [-1, 1]; cut into "
            f"non-overlapping windows of {samples} samples; clip-level tags = mean over windows"
        ),
        "parameter_count": info.get("parameter_count"),
        "files": files,
        "onnx": {k: exports["onnx"].get(k) for k in ("opset", "sha256") if k in exports["onnx"]}
        if "onnx" in exports
        else None,
        "license": info.get("license") or "apache-2.0",
    }


def _fmt(value, digits=2):
    return (
        "-"
        if value is None
        else (f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}")
    )


def _card_text(info, card_data, repo_id, registry, results, training):
    arch = ARCHITECTURES.get(info.get("architecture"), {})
    name = info.get("name") or info.get("architecture") or "keras_clmr model"
    handle = f"hf://{repo_id}" if repo_id else (info.get("registry_name") or "path/to/this/folder")
    tagger = info.get("task") == "tag"
    samples, rate = info.get("input_samples"), info.get("sample_rate")
    seconds = f"{samples / rate:.2f} s" if samples and rate else "?"
    sidecar = model_json(info)
    summary = info.get("description") or arch.get("what")
    lines = [f"# {name}", "", *([summary, ""] if summary else [])]

    head = " + linear/MLP tagging head (MusicTagger)" if tagger else ""
    lines += [
        "## Model",
        "",
        arch.get("what", f"A keras_clmr {info.get('class_name')}."),
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {info.get('architecture')}{head} |",
        f"| parameters | {parameters_text(info)} |",
        f"| input | mono float32 audio, {rate} Hz, windows of {samples} samples ({seconds}) |",
        f"| outputs | `embedding` [batch, {info.get('embedding_dim')}]"
        + (f", `tags` [batch, {sidecar['num_classes']}] sigmoid probabilities" if tagger else "")
        + " |",
    ]
    if info.get("tags"):
        lines.append(f"| classes | {', '.join(info['tags'])} |")
    lines.append("")

    lines += ["## Training", ""]
    if training:
        lines += [training, ""]
    source = info.get("source_checkpoint") or {}
    release_urls = registry.release_urls(info.get("task")) if registry is not None else ()
    if source and training:  # a converted file, with its own measured parity above
        where = source.get("url") or source.get("file")
        digest = f" (sha256 `{source['sha256']}`)" if source.get("sha256") else ""
        lines += [
            f"Weights converted from {where}{digest} by `keras_clmr.conversion`; the parity "
            "figures above were measured on this file.",
            "",
        ]
    elif release_urls and not source.get("sha256"):  # a registry card: nothing converted yet
        lines += [_RELEASE_NOTE.format(urls=" and ".join(release_urls)), ""]
    elif source and registry is not None and registry.local_builder is not None:
        where = source.get("url") or source.get("file")
        lines += [
            f"Weights: converted locally on first use from `{where}` by the preset's builder "
            "(no converted copy is published); the cached preset's metadata.json records the "
            "conversion and its parity figures.",
            "",
        ]
    elif source:
        where = source.get("url") or source.get("file")
        lines += [f"Weights from {where}; no parity figures are recorded for this copy.", ""]
    if not training and not source:
        lines += [
            "Trained with keras_clmr (see `training/`); the preset's metadata.json records the "
            "details.",
            "",
        ]

    lines += [
        "## How to use",
        "",
        "```python",
        "from keras_clmr.hub import load_pretrained",
        "from keras_clmr.inference import embed" + (", tag" if tagger else ""),
        "",
        (
            f'model = load_pretrained("{info["registry_name"]}"'
            + (', task="tag"' if tagger else "")
            + ")"
            + (f'  # or load_pretrained("{handle}")' if _published(registry, info) else "")
            if info.get("registry_name")
            else f'model = load_pretrained("{handle}")'
        ),
        'result = embed("song.mp3", model=model)  # result.embeddings [T, D], result.times [T] (s)',
    ]
    if tagger:
        lines.append(
            'tags = tag("song.mp3", model=model, top_k=5)  # tags.top: [(name, probability)]'
        )
    lines += [
        "```",
        "",
        "Without Keras, with ONNX Runtime (`model.onnx`, written by `python -m export.export`; "
        "input `audio`, "
        f"outputs {', '.join('`' + o['name'] + '`' for o in sidecar['outputs'])}):",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort, soundfile as sf",
        "",
        f'audio, rate = sf.read("song.wav", dtype="float32")  # mono, {rate} Hz',
        f"n = {samples}",
        "windows = audio[: len(audio) // n * n].reshape(-1, n)",
        'session = ort.InferenceSession("model.onnx")',
        "outputs = dict(zip([o.name for o in session.get_outputs()], "
        'session.run(None, {"audio": windows})))',
        "```",
        "",
        "A SavedModel (`saved_model/`, signatures `embed`"
        + (" and `tag`" if tagger else "")
        + ") serves TF Serving and TF.js; `model.json` describes inputs, outputs and classes for "
        "other "
        "runtimes (see keras_clmr's `export/examples/onnxruntime-node` for Node.js).",
        "",
    ]

    lines += ["## Evaluation", ""]
    rows = []
    for result in card_data.eval_results or []:
        source = result.source_name or MEASURED
        rows.append(
            f"| {result.dataset_name} | {result.metric_name} | {result.metric_value} | {source} |"
        )
    if rows:
        lines += ["| dataset | metric | value | source |", "|---|---|---|---|", *rows, ""]
        lines += [
            f"Source: '{MEASURED}' figures come from keras_clmr's own evaluation of this model; "
            f"'{REPORTED}' figures are the authors' published numbers, copied, not reproduced.",
            "",
        ]
    else:
        lines += ["No evaluation results are recorded for this model.", ""]
    if registry is not None and registry.protocol:
        lines += [f"Protocol (published scores): {registry.protocol}", ""]
    for result in results:
        protocol = result.get("protocol") or {}
        data = result.get("data") or {}
        details = ", ".join(f"{k}: {v}" for k, v in protocol.items() if not isinstance(v, dict))
        lines += [
            f"Protocol (keras_clmr, `{os.path.basename(result['path'])}`, {result.get('task')}): "
            f"{details}. Data: {json.dumps(data)}.",
            "",
        ]
    exports = info.get("exports") or {}
    for fmt, export in exports.items():
        figures = (export.get("parity") or {}).get("max_abs_diff") or {}
        worst = max((max(v.values()) for v in figures.values()), default=None)
        if worst is not None:
            lines += [
                f"Export parity ({fmt}): max abs difference to the Keras model {worst:.2e} over "
                "batches "
                f"{(export.get('parity') or {}).get('batches')} (tolerance "
                f"{(export.get('parity') or {}).get('atol')}).",
                "",
            ]

    lines += ["## Limitations and deviations from the original", ""]
    lines += [
        f"- {text}" for text in arch.get("limitations", ("See the keras_clmr documentation.",))
    ]
    if exports or info.get("has_onnx"):
        lines.append(f"- {_EXPORT_NOTE}")
    lines.append("")

    lines += ["## Citation", "", "```bibtex"]
    lines += ["\n\n".join(CITATIONS[key] for key in arch.get("citations", ("clmr",)))]
    lines += ["```", ""]
    return "\n".join(lines)


_RELEASE_NOTE = (
    "Weights: the original authors' release file(s) {urls}, downloaded into the keras_clmr "
    "cache and converted locally on first use (no converted copy is published). The conversion "
    "runs without torch and is kept only if the Keras model reproduces a float64 numpy forward "
    "pass of the original network on fixed audio, max|keras - reference| <= 1e-4 * max(1, "
    "max|reference|), with equal parameter counts; the cached preset's metadata.json records "
    "the URL, the file's size and sha256 and the measured figures. The first download's sha256 "
    "is kept; a later download that differs is refused (trust on first use)."
)


def _published(registry, info):
    """Whether a Hub copy of this model is pinned (or this card is not a registry preset's)."""
    if registry is None:
        return True
    task = info.get("task")
    if registry.pinned_handle(task) is not None:
        return True
    return not registry.release_urls(task) and registry.local_builder is None


def require_input_shape(info):
    """Raise ``ModelCardError`` unless ``info`` knows the sample rate and window length."""
    if not info.get("sample_rate") or not info.get("input_samples"):
        raise ModelCardError(
            "The model's sample_rate and input_samples are unknown; re-save the "
            "preset with keras_clmr.save_preset (metadata.json records them)."
        )


def render_card(info, *, repo_id=None, results=(), training=None, registry=None, scores=None):
    """A ``huggingface_hub.ModelCard`` for ``info`` (``describe_metadata``/``describe_registry``).

    ``results``: loaded keras_clmr results.json dicts; ``training``: a paragraph for the
    Training section; ``scores``: published scores when ``info`` names no registry preset.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if registry is None and info.get("registry_name"):
        registry = presets.get_preset(info["registry_name"])
    if scores is None and registry is None and info.get("reported_scores"):
        scores = info["reported_scores"]
    if training is None and info.get("conversion"):
        training = conversion_notes(info["conversion"])
    elif training is None and info.get("training_run"):
        training = run_notes(info["training_run"])
    for result in results:
        check_results_match(info, result)
    arch = ARCHITECTURES.get(info.get("architecture"), {})
    evals = eval_results(info, registry, results, scores)
    datasets = sorted({e.dataset_type for e in evals})
    tags = ["keras", "keras_clmr", "audio", "music", str(info.get("architecture", "")).lower()]
    tags += [arch["family"]] if arch.get("family") and arch["family"] not in tags else []
    tags += ["music-tagging"] if info.get("task") == "tag" else ["music-representation"]
    if info.get("has_onnx") or "onnx" in (info.get("exports") or {}):
        tags.append("onnx")
    card_data = ModelCardData(
        library_name="keras",
        license=info.get("license") or (registry.license if registry else "apache-2.0"),
        tags=tags,
        datasets=datasets or None,
        pipeline_tag="audio-classification" if info.get("task") == "tag" else "feature-extraction",
        model_name=info.get("name") or "keras_clmr model",
        eval_results=evals or None,
    )
    text = _card_text(info, card_data, repo_id, registry, list(results), training)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{text}")


def run_notes(recipe):
    """The Training paragraph of a model from a keras_clmr pretraining run (its recipe)."""
    recipe = recipe or {}
    settings = recipe.get("settings") or {}
    keys = ("model", "dataset", "data_dir", "epochs", "batch_size", "learning_rate", "seed")
    shown = ", ".join(f"{key} {settings[key]}" for key in keys if settings.get(key) is not None)
    finished = recipe.get("finished") or {}
    epochs = f" ({finished['epoch']} epochs finished)" if finished.get("epoch") else ""
    return (
        f"Pretrained with keras_clmr (`keras-clmr pretrain`, run `{recipe.get('run')}`)"
        f"{epochs}" + (f": {shown}." if shown else ".") + " metadata.json's `training_run` "
        "records every setting of the run."
    )


def _sci(value):
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def conversion_notes(metadata):
    """The Training paragraph of a converted model: source format and parity figures."""
    lines = [
        f"Source format `{metadata.get('source_format')}`, converted with "
        "`keras_clmr.conversion`; every source tensor was used or is listed in "
        "`metadata.json` with the reason it was left out.",
        "",
        "| part | output | max abs difference | relative to max(1, max abs reference) "
        "| tolerance |",
        "|---|---|---|---|---|",
    ]
    for section, label in (
        (metadata, "model"),
        (metadata.get("finetuner") or {}, "fine-tuner head"),
    ):
        parity = section.get("parity")
        relative = (parity or {}).get("relative_diff") or {}
        for output, diff in (parity or {}).get("max_abs_diff", {}).items():
            lines.append(
                f"| {label} | {output} | {_sci(diff)} | {_sci(relative.get(output, '-'))} "
                f"| {_sci(parity['tolerance'])} |"
            )
    parity = metadata.get("parity") or {}
    if parity:
        lines += ["", f"Reference: {parity.get('reference')}. Inputs: {parity.get('inputs')}."]
        if parity.get("rule"):
            lines += ["", f"Acceptance rule: {parity['rule']}."]
    counts = metadata.get("parameter_counts") or parity.get("parameter_counts")
    if counts:
        lines += ["", "Parameter counts (source vs Keras): `" + json.dumps(counts) + "`"]
    return "\n".join(lines)
