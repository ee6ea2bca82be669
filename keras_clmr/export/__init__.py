"""Export presets to SavedModel and ONNX, checked against the Keras model.

- **SavedModel** (``keras.export.ExportArchive``): signature ``embed`` (``audio`` [batch,
  samples] -> ``embedding`` [batch, D]) and, for a tagger, ``tag`` (``audio`` -> ``tags``
  [batch, C] probabilities); ``serving_default`` is the first of them (``tag`` for a tagger).
- **ONNX** (Keras' ``model.export(format="onnx")``, i.e. tf2onnx on the TensorFlow backend):
  input ``audio`` [batch, samples] with a dynamic batch dimension, outputs ``embedding`` and,
  for a tagger, ``tags``. The tf2onnx graph keeps each BatchNorm as a separate Add and Mul
  behind a Squeeze (Conv1D is lowered to a Conv2D of height 1), which stops ONNX Runtime from
  fusing them; ``optimize_onnx`` folds those per-channel affines into the convolutions and
  removes the Squeeze/Unsqueeze pairs, so ORT then fuses Conv+ReLU. The result is the same
  maths (checked by the parity step) and about as fast as a hand-built graph.

Every export is loaded back (``tf.saved_model.load``, ``onnxruntime.InferenceSession``) and
compared with the Keras model on random audio at batch 1 and 7: a max abs difference above
``atol`` (1e-4) fails the export. Files are written atomically; ``export_preset`` records
the parity figures, export settings and file hashes in the preset's ``metadata.json``.
Exporting needs the TensorFlow backend; the presets themselves are backend-independent.
"""

import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from keras_clmr import hub

FORMATS = ("savedmodel", "onnx")
ONNX_FILE = "model.onnx"
SAVEDMODEL_DIR = "saved_model"
INPUT_NAME = "audio"
EMBED_OUTPUT = "embedding"
TAG_OUTPUT = "tags"
DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4
PARITY_BATCHES = (1, 7)


class ExportError(RuntimeError):
    """An export that could not be written or does not match the Keras model."""


class ParityError(ExportError):
    """An exported model whose outputs differ from the Keras model's by more than the tolerance."""


# ------------------------------------------------------------------------------- models


def _require_tensorflow():
    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"Export runs on the TensorFlow backend (Keras is using {keras.backend.backend()!r}); "
            "set KERAS_BACKEND=tensorflow. Presets are backend-independent, so the exported files "
            "are the same whichever backend trained the model.")


def split_model(model):
    """(encoder, tagger or None) of a keras_clmr model (tagger, encoder or pretrainer)."""
    if hub.is_tagger(model):
        return model.backbone, model
    if hub._is_pretrainer(model):
        return model.encoder, None
    return model, None


def output_names(model):
    """The named outputs of the exports of ``model``: ``["embedding"]`` or ``["embedding", "tags"]``."""
    return [EMBED_OUTPUT, TAG_OUTPUT] if split_model(model)[1] is not None else [EMBED_OUTPUT]


def input_samples(model):
    samples = hub.model_attribute(model, "input_samples")
    if samples is None:
        raise ExportError(f"{type(model).__name__} has no input_samples attribute: the export needs a fixed "
                          "window length (keras_clmr encoders and taggers have one).")
    return int(samples)


class _ExportModel(keras.Model):
    """audio -> [embedding] or [embedding, tags], in inference mode (what the exports contain)."""

    def __init__(self, model, **kwargs):
        super().__init__(name="keras_clmr_export", **kwargs)
        self.encoder, self.tagger = split_model(model)

    def call(self, audio):
        embedding = self.encoder(audio, training=False)
        if self.tagger is None:
            return [embedding]
        logits = self.tagger.head(embedding, training=False)
        return [embedding, self.tagger.activation(logits)]


def keras_outputs(model, audio):
    """The reference outputs {name: array} of ``model`` on ``audio`` [batch, samples]."""
    encoder, tagger = split_model(model)
    out = {EMBED_OUTPUT: keras.ops.convert_to_numpy(encoder(audio, training=False))}
    if tagger is not None:
        out[TAG_OUTPUT] = keras.ops.convert_to_numpy(tagger(audio, training=False))
    return out


def _check_float32(model):
    policy = getattr(model, "dtype_policy", None)
    if policy is not None and policy.compute_dtype != "float32":
        raise ExportError(f"Export needs a float32 model, got dtype policy {policy.name!r}; "
                          "reload the preset with keras.config.set_dtype_policy('float32').")


# ------------------------------------------------------------------------------- atomic files


def _replace(tmp, target):
    """Move ``tmp`` (file or folder) onto ``target``; an old ``target`` is removed only afterwards."""
    if os.path.isdir(target) and not os.path.islink(target):
        old = f"{target}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _tmp_path(target, suffix=""):
    folder = os.path.dirname(os.path.abspath(target)) or "."
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{os.path.basename(target)}.tmp-{os.getpid()}-{time.monotonic_ns()}{suffix}")


# ------------------------------------------------------------------------------- ONNX


def _initializers(graph):
    return {init.name: init for init in graph.initializer}


def _consumers(graph):
    table = {}
    for node in graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def _channel_vector(value, rank, channels):
    """A per-channel (axis 1) vector from a constant broadcast against a rank-``rank`` tensor, else None."""
    if value.ndim > rank or value.dtype != np.float32:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _fold_affine(graph):
    """Conv [-> Squeeze] -> Add/Sub/Mul by per-channel constants  =>  Conv' [-> Squeeze]."""
    from onnx import numpy_helper

    inits = _initializers(graph)
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] not in inits):
            continue
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        channels, rank = weight.shape[0], weight.ndim
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2
                else np.zeros(channels))
        current, squeeze, folded = conv.output[0], None, []
        while current not in outputs and len(consumers.get(current, [])) == 1:
            node = consumers[current][0]
            if node.op_type == "Squeeze" and squeeze is None and not folded and len(node.input) == 2 \
                    and node.input[1] in inits:
                axes = [int(a) % rank for a in numpy_helper.to_array(inits[node.input[1]]).reshape(-1)]
                if 0 in axes or 1 in axes:
                    break
                squeeze, rank = node, rank - len(axes)
            elif node.op_type in ("Add", "Sub", "Mul") and len(node.input) == 2:
                other = node.input[1] if node.input[0] == current else node.input[0]
                if other not in inits or (node.op_type == "Sub" and node.input[0] != current):
                    break
                vector = _channel_vector(numpy_helper.to_array(inits[other]), rank, channels)
                if vector is None:
                    break
                if node.op_type == "Mul":
                    weight = weight * vector.reshape((-1,) + (1,) * (weight.ndim - 1))
                    bias = bias * vector
                else:
                    bias = bias + vector if node.op_type == "Add" else bias - vector
                folded.append(node)
            else:
                break
            current = node.output[0]
        if not folded:
            continue
        stem = conv.name or conv.output[0]
        w_name, b_name = f"{stem}/folded_weight", f"{stem}/folded_bias"
        graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), w_name),
                                  numpy_helper.from_array(bias.astype(np.float32), b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        last = folded[-1].output[0]
        if squeeze is not None:
            squeeze.output[0] = last
        else:
            conv.output[0] = last
        for node in folded:
            graph.node.remove(node)
        return True
    return False


def _commute_squeeze(graph):
    """Squeeze -> Relu  =>  Relu -> Squeeze (so Conv and Relu become adjacent)."""
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    for i, squeeze in enumerate(nodes):
        if squeeze.op_type != "Squeeze" or squeeze.output[0] in outputs:
            continue
        users = consumers.get(squeeze.output[0], [])
        if len(users) != 1 or users[0].op_type != "Relu":
            continue
        relu = users[0]
        a, b, c = squeeze.input[0], squeeze.output[0], relu.output[0]
        relu.input[0], relu.output[0] = a, b
        squeeze.input[0], squeeze.output[0] = b, c
        j = nodes.index(relu)
        nodes[i], nodes[j] = relu, squeeze
        del graph.node[:]
        graph.node.extend(nodes)
        return True
    return False


def _cancel_squeeze(graph):
    """Squeeze(axes) -> Unsqueeze(same axes)  =>  nothing."""
    from onnx import numpy_helper

    inits = _initializers(graph)
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    for squeeze in graph.node:
        if squeeze.op_type != "Squeeze" or squeeze.output[0] in outputs or len(squeeze.input) != 2:
            continue
        users = consumers.get(squeeze.output[0], [])
        if len(users) != 1 or users[0].op_type != "Unsqueeze" or len(users[0].input) != 2:
            continue
        unsqueeze = users[0]
        if unsqueeze.output[0] in outputs or squeeze.input[1] not in inits or unsqueeze.input[1] not in inits:
            continue
        axes_s = numpy_helper.to_array(inits[squeeze.input[1]]).reshape(-1).tolist()
        axes_u = numpy_helper.to_array(inits[unsqueeze.input[1]]).reshape(-1).tolist()
        if sorted(axes_s) != sorted(axes_u) or min(axes_s) < 0:
            continue
        source, target = squeeze.input[0], unsqueeze.output[0]
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == target:
                    node.input[k] = source
        graph.node.remove(squeeze)
        graph.node.remove(unsqueeze)
        return True
    return False


def _prune_initializers(graph):
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def optimize_onnx(model_proto):
    """Fold per-channel Add/Mul (BatchNorm, bias) into convolutions and drop Squeeze/Unsqueeze pairs.

    Works in place on an ``onnx.ModelProto`` and returns it with a dict of what was done.
    Only exact algebraic rewrites (in float64, stored as float32); the export's parity check
    still compares the result with Keras.
    """
    graph = model_proto.graph
    counts = {"folded_affines": 0, "commuted_relus": 0, "cancelled_squeezes": 0}
    before = len(graph.node)
    for key, rewrite in (("folded_affines", _fold_affine), ("commuted_relus", _commute_squeeze),
                         ("cancelled_squeezes", _cancel_squeeze)):
        while rewrite(graph):
            counts[key] += 1
    _prune_initializers(graph)
    counts["nodes_before"], counts["nodes_after"] = before, len(graph.node)
    return model_proto, counts


def _rename_io(model_proto, outputs):
    """Name the graph input ``audio`` and its outputs ``outputs``; call the batch dimension ``batch``."""
    graph = model_proto.graph
    if len(graph.input) != 1 or len(graph.output) != len(outputs):
        raise ExportError(f"Unexpected ONNX signature: inputs {[i.name for i in graph.input]}, "
                          f"outputs {[o.name for o in graph.output]} (expected 1 input, {outputs}).")
    renames = {graph.input[0].name: INPUT_NAME}
    renames.update({o.name: new for o, new in zip(graph.output, outputs)})
    for node in graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = renames.get(name, name)
        for k, name in enumerate(node.output):
            node.output[k] = renames.get(name, name)
    for value in [*graph.input, *graph.output]:
        value.name = renames.get(value.name, value.name)
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def export_onnx(model, path, *, opset=DEFAULT_OPSET, optimize=True):
    """Write ``model`` (encoder or tagger) as an ONNX file at ``path`` (atomically); return info.

    Uses ``keras.Model.export(format="onnx")`` (tf2onnx), renames the signature to ``audio`` ->
    ``embedding`` [/ ``tags``] with a dynamic ``batch`` dimension, then (``optimize``) folds
    BatchNorm into the convolutions (``optimize_onnx``). Does not check parity (see
    ``check_onnx_parity``).
    """
    import onnx
    import tensorflow as tf

    _require_tensorflow()
    _check_float32(model)
    samples = input_samples(model)
    wrapper = _ExportModel(model)
    wrapper(np.zeros((1, samples), np.float32))
    names = output_names(model)
    raw = _tmp_path(path, ".raw.onnx")
    tmp = _tmp_path(path, ".onnx")
    try:
        start = time.perf_counter()
        wrapper.export(raw, format="onnx", verbose=False, opset_version=int(opset),
                       input_signature=[tf.TensorSpec((None, samples), tf.float32, name=INPUT_NAME)])
        proto = onnx.load(raw)
        _rename_io(proto, names)
        counts = None
        if optimize:
            proto, counts = optimize_onnx(proto)
        proto.producer_name = "keras_clmr"
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        _replace(tmp, path)
        seconds = time.perf_counter() - start
    finally:
        for leftover in (raw, tmp):
            if os.path.exists(leftover):
                os.remove(leftover)
    return {"file": os.path.basename(path), "opset": int(opset), "inputs": [INPUT_NAME], "outputs": names,
            "input_shape": ["batch", samples], "exporter": f"keras {keras.__version__} model.export(format='onnx')"
            " (tf2onnx)", "optimized": counts, "export_seconds": round(seconds, 2)}


def onnx_session(path, threads=None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    return onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, audio):
    """{output name: array} of an ONNX session on ``audio`` [batch, samples]."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT_NAME: np.asarray(audio, np.float32)})))


# ------------------------------------------------------------------------------- SavedModel


def export_savedmodel(model, path):
    """Write ``model`` as a TF SavedModel folder at ``path`` (atomically); return info.

    Signatures: ``embed`` (``audio`` -> ``embedding``) and, for a tagger, ``tag``
    (``audio`` -> ``tags``); ``serving_default`` is ``tag`` for a tagger, else ``embed``.
    """
    import tensorflow as tf

    _require_tensorflow()
    _check_float32(model)
    samples = input_samples(model)
    encoder, tagger = split_model(model)
    (tagger or encoder)(np.zeros((1, samples), np.float32), training=False)
    spec = [tf.TensorSpec((None, samples), tf.float32, name=INPUT_NAME)]
    archive = keras.export.ExportArchive()
    archive.track(tagger or encoder)
    endpoints = []
    if tagger is not None:
        endpoints.append("tag")
        archive.add_endpoint("tag", lambda audio: {TAG_OUTPUT: tagger(audio, training=False)}, input_signature=spec)
    endpoints.append("embed")
    archive.add_endpoint("embed", lambda audio: {EMBED_OUTPUT: encoder(audio, training=False)},
                         input_signature=spec)
    tmp = _tmp_path(path)
    start = time.perf_counter()
    try:
        archive.write_out(tmp, verbose=False)
        _replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return {"folder": os.path.basename(path), "signatures": endpoints, "serving_default": endpoints[0],
            "inputs": [INPUT_NAME], "outputs": {"embed": [EMBED_OUTPUT], **({"tag": [TAG_OUTPUT]} if tagger else {})},
            "input_shape": ["batch", samples], "exporter": f"keras {keras.__version__} ExportArchive",
            "export_seconds": round(time.perf_counter() - start, 2)}


def savedmodel_outputs(loaded, audio):
    """{output name: array} of a ``tf.saved_model.load``-ed export (all its signatures)."""
    import tensorflow as tf

    result = {}
    for signature in ("embed", "tag"):
        if signature in loaded.signatures:
            out = loaded.signatures[signature](**{INPUT_NAME: tf.constant(np.asarray(audio, np.float32))})
            result.update({name: value.numpy() for name, value in out.items()})
    return result


# ------------------------------------------------------------------------------- parity


def random_audio(batch, samples, seed=0):
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (batch, samples)).astype(np.float32)


def _compare(run, model, batches, atol, seed, what):
    samples = input_samples(model)
    figures = {}
    for batch in batches:
        audio = random_audio(batch, samples, seed + batch)
        expected = keras_outputs(model, audio)
        got = run(audio)
        for name, reference in expected.items():
            if name not in got:
                raise ParityError(f"{what} has no output {name!r} (it has {sorted(got)}).")
            if got[name].shape != reference.shape:
                raise ParityError(f"{what} output {name!r} has shape {got[name].shape} at batch {batch}, "
                                  f"Keras gives {reference.shape}.")
            diff = float(np.max(np.abs(got[name].astype(np.float64) - reference)))
            figures.setdefault(name, {})[f"batch_{batch}"] = diff
            if not diff <= atol:
                raise ParityError(
                    f"{what} output {name!r} differs from the Keras model by {diff:.3g} (max abs, batch {batch}) "
                    f"> {atol:g}; the export is wrong and was not kept. Try another --opset or report the model.")
    return {"max_abs_diff": figures, "atol": atol, "batches": list(batches),
            "inputs": f"uniform(-0.9, 0.9) audio, seed {seed} + batch"}


def check_onnx_parity(model, path, batches=PARITY_BATCHES, atol=PARITY_ATOL, seed=0):
    """Max abs differences {output: {batch_n: diff}} of the ONNX file against Keras; raise above ``atol``."""
    session = onnx_session(path)
    return _compare(lambda audio: run_onnx(session, audio), model, batches, atol, seed, f"ONNX export {path}")


FLOAT16_ATOL = 1e-3
FLOAT16_NOTE = (
    "The frontend rounds the mel power to float16 before the log (musicnn's own input pipeline does). A float32 "
    "difference of one ulp in the DFT (another runtime's summation order) can flip one float16 rounding, a 2^-11 "
    "relative step in one mel bin, so outputs of the exported graph and of Keras can differ by more than 1e-4 on "
    "some inputs. The graph itself is checked with the rounding switched off in both (without_float16_rounding, "
    "<= atol); the shipped graph is checked against the looser float16_atol.")


def _float16_layers(model):
    # Every layer carrying the flag (the frontend, and models that store it in their config).
    return [layer for layer in model._flatten_layers(include_self=True) if getattr(layer, "float16_rounding", False)]


def checked_parity(fmt, model, path, *, batches=PARITY_BATCHES, atol=PARITY_ATOL):
    """Parity of an export at ``path`` ("onnx" or "savedmodel"); raises ParityError above the tolerance.

    A model whose frontend rounds to float16 (musicnn) that misses ``atol`` is re-exported with the
    rounding off: that graph must meet ``atol``, and the shipped one ``FLOAT16_ATOL`` (see ``FLOAT16_NOTE``).
    """
    check = check_onnx_parity if fmt == "onnx" else check_savedmodel_parity
    try:
        return check(model, path, batches=batches, atol=atol)
    except ParityError:
        rounding = _float16_layers(model)
        if not rounding:
            raise
    probe = _tmp_path(path, ".f32")
    for layer in rounding:
        layer.float16_rounding = False
    try:
        (export_onnx if fmt == "onnx" else export_savedmodel)(model, probe)
        exact = check(model, probe, batches=batches, atol=atol)
    finally:
        for layer in rounding:
            layer.float16_rounding = True
        if os.path.isdir(probe):
            shutil.rmtree(probe, ignore_errors=True)
        elif os.path.exists(probe):
            os.remove(probe)
    shipped = check(model, path, batches=batches, atol=FLOAT16_ATOL)
    shipped.update(float16_atol=FLOAT16_ATOL, without_float16_rounding=exact, note=FLOAT16_NOTE)
    return shipped


def check_savedmodel_parity(model, path, batches=PARITY_BATCHES, atol=PARITY_ATOL, seed=0):
    """As ``check_onnx_parity`` for a SavedModel folder (loaded with ``tf.saved_model.load``)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(path))
    return _compare(lambda audio: savedmodel_outputs(loaded, audio), model, batches, atol, seed,
                    f"SavedModel export {path}")


# ------------------------------------------------------------------------------- presets


def update_metadata(preset_dir, **fields):
    """Set top-level ``fields`` in ``metadata.json`` and re-hash every file of the folder (atomically)."""
    metadata = hub.read_metadata(preset_dir)
    metadata.update(hub._to_jsonable(fields))
    metadata["files"] = hub._hash_folder(preset_dir)
    hub._write_json_atomic(os.path.join(preset_dir, hub.METADATA_FILE), metadata)
    return metadata


def load_model(name_or_handle, task=None):
    """(model, preset folder) for a registry name, an hf:// handle or a preset folder."""
    folder = hub.resolve(name_or_handle, task=task)
    return hub.load_preset(folder, task=task), folder


def _copy_preset(source, target):
    """Copy preset folder ``source`` to ``target`` (atomically, following HF-cache symlinks)."""
    tmp = _tmp_path(target)
    try:
        shutil.copytree(source, tmp, symlinks=False, ignore=shutil.ignore_patterns(".*"))
        os.chmod(tmp, 0o755)
        _replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def parse_formats(formats):
    if isinstance(formats, str):
        formats = FORMATS if formats == "all" else (formats,)
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"Unknown export format(s) {unknown or formats}; choose from {FORMATS} or 'all'.")
    return formats


def export_preset(model, output=None, formats="all", *, task=None, opset=DEFAULT_OPSET, optimize=True,
                  atol=PARITY_ATOL, batches=PARITY_BATCHES, record=True):
    """Export a preset (registry name, hf:// handle, folder) or a ``keras.Model`` with parity checks.

    Args:
        model: what to export. A keras.Model needs ``output``.
        output: the folder to write. For a preset, a copy of the preset folder with the
            exports added (default: the preset folder itself when it is a local folder; a
            registry name or hf:// handle needs ``output``, the cache is never modified).
        formats: "savedmodel", "onnx", "all" or a list.
        task: "embed" or "tag" when resolving a registry name (default: what is stored).
        record: add ``exports`` (settings, parity figures) to ``metadata.json`` and re-hash
            the files, when ``output`` is a preset folder.

    Returns a JSON-able summary with, per format, the file, parity figures, sha256 and size.
    An export that fails its parity check raises ``ParityError`` and leaves nothing behind.
    """
    _require_tensorflow()
    formats = parse_formats(formats)
    source_dir = None
    if not isinstance(model, keras.Model):
        handle = os.fspath(model)
        if output is None:
            if not os.path.isdir(handle):
                raise ExportError(f"{handle} is not a local preset folder (a registry name or Hub handle): pass "
                                  "--output, the folder to write (the Hugging Face and keras_clmr caches are never "
                                  "modified).")
            output = handle
        model, source_dir = load_model(handle, task=task)
    elif output is None:
        raise ExportError("Exporting a keras.Model needs an output folder.")
    output = os.path.abspath(os.fspath(output))
    if source_dir is not None and os.path.abspath(source_dir) != output:
        _copy_preset(source_dir, output)
    os.makedirs(output, exist_ok=True)
    is_preset = os.path.isfile(os.path.join(output, hub.METADATA_FILE))
    summary = {"output": output, "model": type(model).__name__, "task": "tag" if split_model(model)[1] else "embed",
               "input_samples": input_samples(model), "sample_rate": hub.model_attribute(model, "sample_rate"),
               "exports": {}}
    for fmt in formats:
        if fmt == "onnx":
            target = os.path.join(output, ONNX_FILE)
            staged = _tmp_path(target, ".onnx")
            info = export_onnx(model, staged, opset=opset, optimize=optimize)
            try:
                info["parity"] = checked_parity("onnx", model, staged, batches=batches, atol=atol)
            except BaseException:
                os.remove(staged)
                raise
            _replace(staged, target)
            info["file"] = ONNX_FILE
            info.update(sha256=hub.sha256_file(target), size=os.path.getsize(target))
        else:
            target = os.path.join(output, SAVEDMODEL_DIR)
            staged = _tmp_path(target)
            info = export_savedmodel(model, staged)
            try:
                info["parity"] = checked_parity("savedmodel", model, staged, batches=batches, atol=atol)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            _replace(staged, target)
            info["folder"] = SAVEDMODEL_DIR
            info["files"] = {rel: entry for rel, entry in _hash_tree(target).items()}
        summary["exports"][fmt] = info
    if record and is_preset:
        metadata = hub.read_metadata(output)
        exports = dict(metadata.get("exports") or {})
        exports.update(summary["exports"])
        update_metadata(output, exports=exports)
        summary["metadata"] = os.path.join(output, hub.METADATA_FILE)
    return summary


def _hash_tree(folder):
    return {f"{os.path.basename(folder)}/{rel}": entry for rel, entry in hub._hash_folder(folder).items()}


def summary_json(summary):
    return json.dumps(hub._to_jsonable(summary), indent=2)
