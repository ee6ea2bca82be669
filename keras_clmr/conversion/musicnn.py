"""The musicnn taggers (``pip install --no-deps musicnn==0.1.0``) -> Keras, with parity against
the original graph.

The wheel ships TF1 checkpoints (``musicnn/<MODEL>/.index``, ``.data-*``, ``.meta``) and a
``config.json`` per model. Variables are read with ``tf.compat.v1.train.NewCheckpointReader``
and mapped onto :class:`keras_clmr.models.musicnn.Musicnn` + a ``MusicTagger`` head.

Parity: the saved meta graph does not import whole on current TensorFlow (its training
ops are gone), so the inference sub-graph ending at ``model/Sigmoid`` is extracted, its
variables are replaced by constants holding the checkpoint values, and it runs under
``tf.compat.v1`` on log-mel patches. The Keras tagger must give the same tag probabilities
(max abs difference <= 1e-4).
"""

import json
import os
import sys

import numpy as np

from keras_clmr.conversion.common import (
    PARITY_TOLERANCE,
    ConversionError,
    KeyLedger,
    check_parity,
    max_abs_diff,
    to_numpy,
)

MODELS = {
    # original name: (architecture, dataset)
    "MTT_musicnn": ("musicnn", "MTT"),
    "MSD_musicnn": ("musicnn", "MSD"),
    "MTT_vgg": ("vgg", "MTT"),
    "MSD_vgg": ("vgg", "MSD"),
}
PRESETS = {
    "musicnn-mtt": "MTT_musicnn",
    "musicnn-msd": "MSD_musicnn",
    "vgg-mtt": "MTT_vgg",
    "vgg-msd": "MSD_vgg",
}
WHEEL = "musicnn==0.1.0"

# TF variable scope -> (Keras layer name, kind). Order = creation order in musicnn/models.py.
_MUSICNN_MAP = [
    ("batch_normalization", "bn_input", "bn"),
    ("conv2d", "timbral_74_conv", "conv2d"),
    ("batch_normalization_1", "timbral_74_bn", "bn"),
    ("conv2d_1", "timbral_77_conv", "conv2d"),
    ("batch_normalization_2", "timbral_77_bn", "bn"),
    ("conv2d_2", "temporal_128_conv", "conv2d"),
    ("batch_normalization_3", "temporal_128_bn", "bn"),
    ("conv2d_3", "temporal_64_conv", "conv2d"),
    ("batch_normalization_4", "temporal_64_bn", "bn"),
    ("conv2d_4", "temporal_32_conv", "conv2d"),
    ("batch_normalization_5", "temporal_32_bn", "bn"),
    ("conv2d_5", "midend_1_conv", "conv2d_as_1d"),
    ("batch_normalization_6", "midend_1_bn", "bn"),
    ("conv2d_6", "midend_2_conv", "conv2d_as_1d"),
    ("batch_normalization_7", "midend_2_bn", "bn"),
    ("conv2d_7", "midend_3_conv", "conv2d_as_1d"),
    ("batch_normalization_8", "midend_3_bn", "bn"),
    ("batch_normalization_9", "pool_bn", "bn"),
    ("dense", "penultimate_dense", "dense"),
    ("batch_normalization_10", "penultimate_bn", "bn"),
    ("dense_1", "head/logits", "dense"),
]
_VGG_MAP = [("batch_normalization", "bn_input", "bn")]
for _i in range(1, 6):
    _VGG_MAP += [
        (f"{_i}CNN", f"vgg_{_i}_conv", "conv2d"),
        (f"batch_normalization_{_i}", f"vgg_{_i}_bn", "bn"),
    ]
_VGG_MAP.append(("dense", "head/logits", "dense"))

_OPTIMIZER_SUFFIXES = ("/Adam", "/Adam_1")


class MusicnnNotInstalledError(ConversionError, ImportError):
    """The musicnn wheel (which holds the weights) is not installed."""


def package_dir():
    """The installed ``musicnn`` package folder (its checkpoints and configs live there)."""
    import importlib.util

    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise MusicnnNotInstalledError(
            f"The musicnn weights come from its wheel: pip install --no-deps {WHEEL} "
            "(--no-deps: its numpy<1.17 pin cannot be met and is not needed here)."
        )
    return list(spec.submodule_search_locations)[0]


def model_dir(name):
    if name not in MODELS:
        raise ConversionError(f"Unknown musicnn model {name!r}; choose one of {sorted(MODELS)}.")
    path = os.path.join(package_dir(), name)
    if not os.path.isfile(os.path.join(path, ".index")):
        raise MusicnnNotInstalledError(f"{path} has no checkpoint (.index); reinstall {WHEEL}.")
    return path


def labels(dataset):
    """Tag names of the MTT or MSD models, read from the wheel's configuration module."""
    import importlib.util

    path = os.path.join(package_dir(), "configuration.py")
    spec = importlib.util.spec_from_file_location("_musicnn_configuration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # plain constants, no imports
    return list(getattr(module, f"{dataset}_LABELS"))


def read_config(name):
    with open(os.path.join(model_dir(name), "config.json")) as handle:
        return json.load(handle)


def read_reported_result(name):
    """The authors' ``experiment.result`` (test ROC-AUC / PR-AUC as they reported them)."""
    path = os.path.join(model_dir(name), "experiment.result")
    with open(path) as handle:
        text = handle.read()
    values = []
    for line in text.replace("\r", "\n").split("\n"):
        if ":" in line:
            try:
                values.append(float(line.rsplit(":", 1)[1]))
            except ValueError:
                pass
    out = {"text": text.strip()}
    if len(values) >= 2:
        out.update(roc_auc=values[-2], pr_auc=values[-1])
    return out


def read_variables(name):
    """{TF variable name: numpy array} of a wheel checkpoint."""
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(model_dir(name) + os.sep)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def _layer(tagger, path):
    if path.startswith("head/"):
        return tagger.head.get_layer(path.split("/", 1)[1])
    return tagger.backbone.get_layer(path)


def _meta_graph(name):
    import tensorflow as tf

    meta = tf.compat.v1.MetaGraphDef()
    with open(os.path.join(model_dir(name), ".meta"), "rb") as handle:
        meta.ParseFromString(handle.read())
    return meta


def graph_vgg_pools(name):
    """The five VGG max-pools (pool_h, pool_w, stride_h, stride_w), read from the training graph.

    musicnn 0.1.0's ``models.vgg`` hard-codes MTT_vgg's pools, but MSD_vgg was trained with
    others (4x1/4x1, 1x4/1x4, ...): the graph saved next to the weights is authoritative.
    """
    import tensorflow as tf

    graph_def = tf.compat.v1.graph_util.extract_sub_graph(
        _meta_graph(name).graph_def, ["model/Sigmoid"]
    )
    pools = {}
    for node in graph_def.node:
        if node.op == "MaxPool":
            k = list(node.attr["ksize"].list.i)
            st = list(node.attr["strides"].list.i)
            if node.attr["data_format"].s not in (b"", b"NHWC"):
                raise ConversionError(
                    f"{name}: unexpected MaxPool data format {node.attr['data_format'].s}."
                )
            pools[node.name] = (k[1], k[2], st[1], st[2])
    if len(pools) != 5:
        raise ConversionError(
            f"{name}: expected 5 MaxPool ops in the VGG graph, found {len(pools)}."
        )
    return tuple(pools[key] for key in sorted(pools, key=lambda n: (len(n), n)))


def build_tagger(name):
    """An untrained Keras tagger with the architecture of wheel model ``name``."""
    from keras_clmr.models.musicnn import musicnn_tagger

    architecture, dataset = MODELS[name]
    config = read_config(name)
    rep = config.get("audio_rep", {})
    expected = {"resample_sr": 16000, "hop": 256, "n_fft": 512, "n_mels": 96}
    for key, value in expected.items():
        if rep.get(key) != value:
            raise ConversionError(
                f"{name}/config.json: audio_rep.{key} is {rep.get(key)}, expected {value}."
            )
    if config.get("xInput") != 187 or config.get("yInput") != 96:
        raise ConversionError(
            f"{name}/config.json: input {config.get('xInput')}x{config.get('yInput')}, "
            "expected 187x96."
        )
    extra = {"vgg_pools": graph_vgg_pools(name)} if architecture == "vgg" else {}
    return musicnn_tagger(
        architecture,
        tags=labels(dataset),
        n_frames=config["xInput"],
        n_mels=config["yInput"],
        **extra,
    )


def assign_variables(tagger, variables, name):
    """Map checkpoint variables onto the tagger.

    Every variable is used or reported, every weight is set.
    """
    architecture, _ = MODELS[name]
    table = _MUSICNN_MAP if architecture == "musicnn" else _VGG_MAP
    ledger = KeyLedger(variables, source=f"musicnn {name} checkpoint")
    for key in variables:
        if key.endswith(_OPTIMIZER_SUFFIXES) or key in ("beta1_power", "beta2_power"):
            ledger.ignore(key, "Adam optimizer state")
    assigned = set()
    pending = []
    for scope, layer_path, kind in table:
        layer = _layer(tagger, layer_path)
        if kind == "bn":
            n = layer.gamma.shape[0]
            pairs = [
                (layer.gamma, f"{scope}/gamma", (n,)),
                (layer.beta, f"{scope}/beta", (n,)),
                (layer.moving_mean, f"{scope}/moving_mean", (n,)),
                (layer.moving_variance, f"{scope}/moving_variance", (n,)),
            ]
        elif kind == "conv2d":
            pairs = [
                (layer.kernel, f"{scope}/kernel", tuple(layer.kernel.shape)),
                (layer.bias, f"{scope}/bias", tuple(layer.bias.shape)),
            ]
        elif kind == "conv2d_as_1d":  # a [7, C, 1, F] Conv2D over [T, C, 1] is a Conv1D [7, C, F]
            k, c, f = layer.kernel.shape
            pairs = [
                (layer.kernel, f"{scope}/kernel", (k, c, 1, f)),
                (layer.bias, f"{scope}/bias", (f,)),
            ]
        else:
            pairs = [
                (layer.kernel, f"{scope}/kernel", tuple(layer.kernel.shape)),
                (layer.bias, f"{scope}/bias", tuple(layer.bias.shape)),
            ]
        for variable, key, shape in pairs:
            value = ledger.take(key, shape)
            if value is not None:
                pending.append((variable, value.reshape(variable.shape)))
    report = ledger.finish()
    for variable, value in pending:
        variable.assign(value.astype("float32"))
        assigned.add(id(variable))
    unset = [v.path for v in tagger.weights if id(v) not in assigned]
    if unset:
        raise ConversionError(
            f"Keras weights left unset by the musicnn conversion: {', '.join(unset)}"
        )
    return report


# The original graph's tensors behind musicnn's extractor features (names in its saved graph).
GRAPH_FEATURES = {
    "musicnn": {
        "timbral": ("model/Squeeze:0", "model/Squeeze_1:0"),
        "temporal": ("model/Squeeze_2:0", "model/Squeeze_3:0", "model/Squeeze_4:0"),
        "cnn1": ("model/transpose:0",),
        "cnn2": ("model/Add:0",),
        "cnn3": ("model/Add_1:0",),
        "max_pool": ("model/Max:0",),
        "mean_pool": ("model/moments/Squeeze:0",),
        "penultimate": ("model/batch_normalization_10/batchnorm/add_1:0",),
    },
    "vgg": {
        f"pool{i}": (f"model/max_pooling2d{'' if i == 1 else f'_{i - 1}'}/MaxPool:0",)
        for i in range(1, 6)
    },
}


class OriginalGraph:
    """The original TF1 inference graph of a wheel model (``model/Sigmoid``), weights frozen in."""

    def __init__(self, name):
        import tensorflow as tf

        self.name = name
        meta = _meta_graph(name)
        self.tensorflow_version = meta.meta_info_def.tensorflow_version
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(meta.graph_def, ["model/Sigmoid"])
        variables = read_variables(name)
        frozen = tf.compat.v1.GraphDef()
        self.bool_inputs = []
        for node in graph_def.node:
            if node.op in ("VariableV2", "Variable"):
                if node.name not in variables:
                    raise ConversionError(
                        f"{name}: graph variable {node.name} is not in the checkpoint."
                    )
                const = frozen.node.add()
                const.name = node.name
                const.op = "Const"
                const.attr["dtype"].type = node.attr["dtype"].type
                const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(variables[node.name]))
                continue
            copy = frozen.node.add()
            copy.CopyFrom(node)
            if node.op == "Placeholder" and node.attr["dtype"].type == tf.bool.as_datatype_enum:
                self.bool_inputs.append(node.name + ":0")
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.import_graph_def(frozen, name="")
        self.session = tf.compat.v1.Session(graph=self.graph)

    def run(self, patches, tensors):
        feed = {"model/Placeholder:0": np.asarray(patches, np.float32)}
        feed.update({name: False for name in self.bool_inputs})
        return self.session.run(list(tensors), feed_dict=feed)

    def __call__(self, patches):
        """Tag probabilities [B, n_tags] of log-mel patches [B, 187, 96] (inference mode)."""
        return self.run(patches, ["model/Sigmoid:0"])[0]

    def features(self, patches):
        """The extractor features of the original graph, shaped like ``Musicnn.logmel_features``."""
        architecture = MODELS[self.name][0]
        table = GRAPH_FEATURES[architecture]
        names = [t for tensors in table.values() for t in tensors]
        values = dict(zip(names, self.run(patches, names)))
        out = {}
        for key, tensors in table.items():
            parts = [values[t] for t in tensors]
            parts = [p[:, :, :, 0] if p.ndim == 4 and key.startswith("cnn") else p for p in parts]
            parts = [p[..., 0] if key in ("max_pool", "mean_pool") else p for p in parts]
            out[key] = np.concatenate(parts, axis=-1)
        return out

    def close(self):
        self.session.close()


def reference_logmel(audio, filterbank=None):
    """float64 numpy version of musicnn's ``batch_data`` frontend for one clip [N] -> [frames, 96].

    librosa 0.6/0.7 conventions (reflect padding), float16 rounding of the mel power,
    log10(1 + 10000 x).
    """
    from keras_clmr.models.musicnn import HOP, N_FFT, slaney_mel_filterbank

    audio = np.asarray(audio, np.float64)
    fb = slaney_mel_filterbank() if filterbank is None else filterbank
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    n_frames = 1 + (padded.size - N_FFT) // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = np.stack([padded[i * HOP : i * HOP + N_FFT] for i in range(n_frames)]) * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = (power @ fb).astype(np.float16)
    return np.log10(10000 * mel.astype(np.float64) + 1)


def parity_audio(seconds=6.0, seed=3):
    """A music-like test signal at 16 kHz (chords + drums from keras_clmr.data.demo)."""
    from keras_clmr.data.demo import synthesize_clip

    audio, _ = synthesize_clip(seed, seconds=seconds, sample_rate=16000)
    return np.asarray(audio, np.float32)


def musicnn_parity(tagger, name, audio=None, graph=None, audio_label=None):
    """Compare the Keras tagger with the original graph on ``audio`` (16 kHz mono).

    Raises on mismatch.
    """
    if audio is None:
        audio, audio_label = parity_audio(), "a synthetic music clip (keras_clmr.data.demo, seed 3)"
    audio = np.asarray(audio, np.float32)
    audio_label = audio_label or "the given audio"
    window = tagger.input_samples
    count = audio.shape[0] // window
    if count < 1:
        raise ConversionError(
            f"Parity audio must hold at least one {window}-sample window at 16 kHz."
        )
    windows = audio[: count * window].reshape(count, window)
    own_graph = graph is None
    graph = OriginalGraph(name) if graph is None else graph
    try:
        patches = to_numpy(tagger.backbone.frontend(windows))
        keras_probs = to_numpy(tagger(windows, training=False))
        graph_probs = graph(patches)
        reference_patches = np.stack([reference_logmel(w) for w in windows]).astype(np.float32)
        graph_reference_probs = graph(reference_patches)
    finally:
        if own_graph:
            graph.close()
    diffs = {
        "tag_probabilities": max_abs_diff(keras_probs, graph_probs),
        # Keras on audio vs the graph on the float64 numpy (librosa-equivalent) frontend.
        "tag_probabilities_end_to_end": max_abs_diff(keras_probs, graph_reference_probs),
    }
    frontend = max_abs_diff(patches, reference_patches)
    check_parity(diffs, what=f"musicnn {name} conversion")
    return {
        "reference": (
            f"original TF1 graph from the {WHEEL} wheel (model/Sigmoid sub-graph, TF "
            f"{graph.tensorflow_version} meta graph) run under tf.compat.v1"
        ),
        "inputs": (
            f"{count} windows x {window} samples of {audio_label} at 16 kHz; "
            "tag_probabilities: the same log-mel patches (Keras frontend) into both; "
            "end_to_end: Keras on audio vs the "
            "graph on a float64 numpy frontend (librosa conventions, float16 rounding)"
        ),
        "max_abs_diff": diffs,
        "tolerance": PARITY_TOLERANCE,
        "passed": True,
        "informative": {"logmel_keras_vs_numpy_reference_max_abs_diff": frontend},
    }


def convert_musicnn(name, parity=True, audio=None, audio_label=None):
    """Convert wheel model ``name`` (``MTT_musicnn``, ``MSD_musicnn``, ``MTT_vgg``, ``MSD_vgg``).

    Returns ``(tagger, metadata)``: a ``MusicTagger`` with a ``Musicnn`` backbone.
    """
    import keras

    architecture, dataset = MODELS.get(name, (None, None))
    if architecture is None:
        raise ConversionError(f"Unknown musicnn model {name!r}; choose one of {sorted(MODELS)}.")
    tagger = build_tagger(name)
    variables = read_variables(name)
    report = assign_variables(tagger, variables, name)
    from keras_clmr.conversion.common import summarize_ledger

    source_params = int(
        sum(
            v.size
            for k, v in variables.items()
            if not k.endswith(_OPTIMIZER_SUFFIXES) and k not in ("beta1_power", "beta2_power")
        )
    )
    metadata = {
        "converted_from": {
            "package": WHEEL,
            "model": name,
            "files": f"musicnn/{name}/.index, .data-00000-of-00001",
        },
        "source_format": "musicnn-tf1",
        "architecture": {
            "family": "musicnn",
            "backbone": "Musicnn",
            "architecture": architecture,
            "dataset": dataset,
            "sample_rate": 16000,
            "input_samples": tagger.input_samples,
            "patch_frames": 187,
            "embedding_dim": tagger.backbone.embedding_dim,
            **(
                {"vgg_pools": [list(p) for p in tagger.backbone.vgg_pools]}
                if architecture == "vgg"
                else {}
            ),
        },
        "keys": summarize_ledger(report),
        "parameter_counts": {
            "checkpoint_variables": source_params,
            "keras": int(tagger.count_params()),
        },
        "reported_result": read_reported_result(name),
        "keras_version": keras.__version__,
    }
    if source_params != metadata["parameter_counts"]["keras"]:
        raise ConversionError(
            f"{name}: checkpoint holds {source_params:,} values but the Keras model has "
            f"{metadata['parameter_counts']['keras']:,} weights."
        )
    if parity:
        metadata["parity"] = musicnn_parity(tagger, name, audio=audio, audio_label=audio_label)
    return tagger, metadata


# (preset name) -> (wheel model, description of the converted preset). The registry
# (keras_clmr.presets.musicnn) holds the published scores.
PRESET_INFO = {
    "musicnn-mtt": (
        "MTT_musicnn",
        "musicnn (Pons & Serra 2019) trained on MagnaTagATune: 50 tags, 16 kHz.",
    ),
    "musicnn-msd": (
        "MSD_musicnn",
        "musicnn (Pons & Serra 2019) trained on the Million Song Dataset: 50 tags, 16 kHz.",
    ),
    "vgg-mtt": (
        "MTT_vgg",
        "The VGG-like baseline of musicnn, trained on MagnaTagATune: 50 tags, 16 kHz.",
    ),
    "vgg-msd": (
        "MSD_vgg",
        "The VGG-like baseline of musicnn, trained on the Million Song Dataset: 50 tags, 16 kHz.",
    ),
}


def reported_scores(preset_name):
    """The published scores of a musicnn preset (from the registry)."""
    from keras_clmr.presets import get_preset

    return get_preset(preset_name).scores


def build_preset(preset_name, preset_dir, task="tag", overwrite=False):
    """Convert the wheel model behind ``preset_name`` (with parity) and write it as a preset folder.

    This is the local builder of the ``musicnn-*`` / ``vgg-*`` presets: ``load_pretrained``
    calls it on first use when the musicnn wheel is installed. Both tasks store the tagger
    (``task="embed"`` loads its backbone).
    """
    from keras_clmr.conversion.report import save_converted

    if preset_name not in PRESET_INFO:
        raise ConversionError(
            f"Unknown musicnn preset {preset_name!r}; choose one of {sorted(PRESET_INFO)}."
        )
    wheel_model, description, *_ = PRESET_INFO[preset_name]
    print(
        f"keras_clmr: first use of {preset_name}: converting the musicnn 0.1.0 wheel's "
        f"{wheel_model} to a "
        "Keras preset in the keras_clmr cache (once; about 30 s and 2 GB on a CPU) ...",
        file=sys.stderr,
        flush=True,
    )
    tagger, metadata = convert_musicnn(wheel_model)
    if metadata["architecture"].get("vgg_pools") and wheel_model == "MSD_vgg":
        description += (
            " Its max-pool sizes are read from the checkpoint's saved training graph: musicnn "
            "0.1.0's models.vgg builds MTT_vgg's pools for it, which do not match these weights."
        )
    return save_converted(
        tagger,
        metadata,
        preset_dir,
        name=preset_name,
        description=description,
        reported_scores=reported_scores(preset_name),
        license_id="isc",
        source_url=f"https://pypi.org/project/musicnn/0.1.0/ ({wheel_model})",
        overwrite=overwrite,
    )
