"""The one ONNX builder: Keras model -> ONNX graph ``audio`` -> ``embedding`` [, ``tags``].

Two front ends write the graph, one pass finishes it:

- ``"direct"``: the graph is written here from the Keras weights, for a ``SampleCNN`` and a
  ``MusicTagger`` on one. Works on every Keras backend and in milliseconds (``embed``/``tag``
  with ``engine="onnxruntime"`` use it).
- ``"tf2onnx"``: Keras' ``model.export(format="onnx")`` for any model (TensorFlow backend);
  what ``export_onnx`` writes by default.
- ``optimize_onnx`` then folds every per-channel affine that follows a convolution (BatchNorm,
  bias) into it and drops Squeeze/Unsqueeze pairs, so ONNX Runtime fuses Conv+ReLU. Exact
  algebra in float64, stored as float32; the parity check compares the result with Keras.

Inputs have a dynamic ``batch`` dimension; outputs are ``embedding`` and, for a tagger,
``tags`` (probabilities). ``onnx``/``onnxruntime``/``tf2onnx`` are imported only when used.
"""

import os
import tempfile
import time

import keras
import numpy as np

from keras_clmr import io
from keras_clmr._optional import require
from keras_clmr.export.signature import (
    DEFAULT_OPSET,
    EMBED_OUTPUT,
    INPUT_NAME,
    TAG_OUTPUT,
    ExportError,
    ExportModel,
    check_float32,
    input_samples,
    output_names,
    require_tensorflow,
)
from keras_clmr.models import is_tagger

METHODS = ("auto", "direct", "tf2onnx")
IR_VERSION = 8  # what ONNX Runtime 1.x loads everywhere


def _require(module):
    return require(module, purpose="ONNX export")


# ------------------------------------------------------------------------------- direct front end


def _array(variable):
    return np.asarray(variable.numpy())


class _GraphWriter:
    """Collects nodes and float32 initializers under unique names."""

    def __init__(self):
        self.onnx = _require("onnx")
        self.nodes, self.initializers = [], []
        self._count = 0

    def name(self, stem):
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, stem, value):
        from onnx import numpy_helper

        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, output=None, **attributes):
        output = output or self.name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [output], **attributes))
        return output


def _sample_cnn_nodes(encoder, graph, x):
    """SampleCNN layers as Conv / Mul+Add (BatchNorm, folded later) / Relu / MaxPool nodes."""
    from keras import layers

    from keras_clmr.models.sample_cnn import SampleCNN

    if type(encoder) is not SampleCNN:
        raise NotImplementedError(
            f"the direct ONNX builder supports SampleCNN, not {type(encoder).__name__}"
        )
    current = graph.node(
        "Reshape", [x, graph.constant("shape_b1t", np.array([0, 1, -1], np.int64))]
    )
    pending_pad = 0
    for layer in encoder.stack:
        if isinstance(layer, layers.ZeroPadding1D):
            left, right = layer.padding
            if left != right:
                raise NotImplementedError("asymmetric padding")
            pending_pad = left
        elif isinstance(layer, layers.Conv1D):
            k, stride = layer.kernel_size[0], layer.strides[0]
            if layer.dilation_rate[0] != 1 or layer.groups != 1:
                raise NotImplementedError("dilation/groups")
            if layer.padding == "same":
                if stride != 1:
                    raise NotImplementedError("strided same padding")
                pads = [(k - 1) // 2, k - 1 - (k - 1) // 2]
            else:
                pads = [pending_pad, pending_pad]
            pending_pad = 0
            inputs = [current, graph.constant("w", np.transpose(_array(layer.kernel), (2, 1, 0)))]
            if layer.use_bias:
                inputs.append(graph.constant("b", _array(layer.bias)))
            current = graph.node("Conv", inputs, kernel_shape=[k], strides=[stride], pads=pads)
        elif isinstance(layer, layers.BatchNormalization):
            mean = _array(layer.moving_mean).astype(np.float64)
            var = _array(layer.moving_variance).astype(np.float64)
            gamma = _array(layer.gamma).astype(np.float64) if layer.scale else np.ones_like(mean)
            beta = _array(layer.beta).astype(np.float64) if layer.center else np.zeros_like(mean)
            scale = gamma / np.sqrt(var + layer.epsilon)
            column = (-1, 1)  # per channel of [batch, channels, time]
            current = graph.node(
                "Mul",
                [current, graph.constant("bn_scale", scale.reshape(column).astype(np.float32))],
            )
            current = graph.node(
                "Add",
                [
                    current,
                    graph.constant(
                        "bn_shift", (beta - mean * scale).reshape(column).astype(np.float32)
                    ),
                ],
            )
        elif isinstance(layer, layers.ReLU):
            current = graph.node("Relu", [current])
        elif isinstance(layer, layers.MaxPooling1D):
            if layer.padding != "valid":
                raise NotImplementedError("same pooling")
            current = graph.node(
                "MaxPool", [current], kernel_shape=[layer.pool_size[0]], strides=[layer.strides[0]]
            )
        else:
            raise NotImplementedError(type(layer).__name__)
    return graph.node("Flatten", [current], EMBED_OUTPUT, axis=1)


def _head_nodes(tagger, graph, x):
    """A MusicTagger head (Dense / ReLU, Dropout skipped) and its sigmoid or softmax."""
    from keras import layers

    current = x
    for layer in tagger.head.layers:
        if isinstance(layer, layers.Dropout):
            continue
        if isinstance(layer, layers.Dense):
            if layer.activation not in (keras.activations.linear, keras.activations.relu):
                raise NotImplementedError("dense activation")
            inputs = [current, graph.constant("dense_w", _array(layer.kernel))]
            if layer.use_bias:
                inputs.append(graph.constant("dense_b", _array(layer.bias)))
            current = graph.node("Gemm", inputs)
            if layer.activation is keras.activations.relu:
                current = graph.node("Relu", [current])
        elif isinstance(layer, layers.ReLU):
            current = graph.node("Relu", [current])
        else:
            raise NotImplementedError(type(layer).__name__)
    if tagger.multi_label:
        return graph.node("Sigmoid", [current], TAG_OUTPUT)
    return graph.node("Softmax", [current], TAG_OUTPUT, axis=-1)


def direct_graph(model, opset=DEFAULT_OPSET):
    """The unoptimised ONNX graph of a SampleCNN or a tagger on one, written from its weights.

    Raises NotImplementedError for other models (use the tf2onnx front end).
    """
    policy = getattr(model, "dtype_policy", None)
    if policy is not None and policy.compute_dtype != "float32":
        raise NotImplementedError("float32 models only")
    graph = _GraphWriter()
    helper, float32 = graph.onnx.helper, graph.onnx.TensorProto.FLOAT
    tagger = is_tagger(model)
    embedding = _sample_cnn_nodes(model.backbone if tagger else model, graph, INPUT_NAME)
    samples = input_samples(model)
    outputs = [helper.make_tensor_value_info(embedding, float32, ["batch", None])]
    if tagger:
        outputs.append(
            helper.make_tensor_value_info(
                _head_nodes(model, graph, embedding), float32, ["batch", None]
            )
        )
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "keras_clmr",
            [helper.make_tensor_value_info(INPUT_NAME, float32, ["batch", samples])],
            outputs,
            initializer=graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", int(opset))],
    )
    proto.ir_version = IR_VERSION
    return proto


# ------------------------------------------------------------------------------- tf2onnx front end


def _rename_io(model_proto, outputs):
    """Name the graph input ``audio``, its outputs ``outputs``, the batch dimension ``batch``."""
    graph = model_proto.graph
    if len(graph.input) != 1 or len(graph.output) != len(outputs):
        raise ExportError(
            f"Unexpected ONNX signature: inputs {[i.name for i in graph.input]}, "
            f"outputs {[o.name for o in graph.output]} (expected 1 input, {outputs})."
        )
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


def tf2onnx_graph(model, opset=DEFAULT_OPSET):
    """The unoptimised ONNX graph of any keras_clmr model via ``model.export(format="onnx")``."""
    onnx = _require("onnx")
    _require("tf2onnx")
    import tensorflow as tf

    require_tensorflow()
    samples = input_samples(model)
    wrapper = ExportModel(model)
    wrapper(np.zeros((1, samples), np.float32))
    with tempfile.TemporaryDirectory(prefix="keras_clmr_onnx-") as scratch:
        raw = os.path.join(scratch, "raw.onnx")
        wrapper.export(
            raw,
            format="onnx",
            verbose=False,
            opset_version=int(opset),
            input_signature=[tf.TensorSpec((None, samples), tf.float32, name=INPUT_NAME)],
        )
        proto = onnx.load(raw)
    _rename_io(proto, output_names(model))
    return proto


# ------------------------------------------------------------------------------- optimisation


def _initializers(graph):
    return {init.name: init for init in graph.initializer}


def _consumers(graph):
    table = {}
    for node in graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def _channel_vector(value, rank, channels):
    """A per-channel (axis 1) vector from a constant broadcast against a rank-``rank`` tensor,
    else None."""
    if value.ndim > rank or value.dtype != np.float32:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1) or shape[1] not in (
        1,
        channels,
    ):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _fold_affine(graph):
    """Conv [-> Squeeze] -> Add/Sub/Mul by per-channel constants  =>  Conv' [-> Squeeze]."""
    from onnx import numpy_helper

    inits = _initializers(graph)
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    for conv in graph.node:
        if (
            conv.op_type != "Conv"
            or conv.input[1] not in inits
            or (len(conv.input) > 2 and conv.input[2] not in inits)
        ):
            continue
        users = consumers.get(conv.output[0], [])
        if len(users) != 1 or users[0].op_type not in ("Squeeze", "Add", "Sub", "Mul"):
            continue  # nothing to fold after this one
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        channels, rank = weight.shape[0], weight.ndim
        bias = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2
            else np.zeros(channels)
        )
        current, squeeze, folded = conv.output[0], None, []
        while current not in outputs and len(consumers.get(current, [])) == 1:
            node = consumers[current][0]
            if (
                node.op_type == "Squeeze"
                and squeeze is None
                and not folded
                and len(node.input) == 2
                and node.input[1] in inits
            ):
                axes = [
                    int(a) % rank for a in numpy_helper.to_array(inits[node.input[1]]).reshape(-1)
                ]
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
        graph.initializer.extend(
            [
                numpy_helper.from_array(weight.astype(np.float32), w_name),
                numpy_helper.from_array(bias.astype(np.float32), b_name),
            ]
        )
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
        if (
            unsqueeze.output[0] in outputs
            or squeeze.input[1] not in inits
            or unsqueeze.input[1] not in inits
        ):
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
    """Fold per-channel Add/Mul (BatchNorm, bias) into convolutions; drop Squeeze/Unsqueeze pairs.

    Works in place on an ``onnx.ModelProto`` and returns it with a dict of what was done.
    Only exact algebraic rewrites (in float64, stored as float32); the export's parity check
    still compares the result with Keras.
    """
    graph = model_proto.graph
    counts = {"folded_affines": 0, "commuted_relus": 0, "cancelled_squeezes": 0}
    before = len(graph.node)
    for key, rewrite in (
        ("folded_affines", _fold_affine),
        ("commuted_relus", _commute_squeeze),
        ("cancelled_squeezes", _cancel_squeeze),
    ):
        while rewrite(graph):
            counts[key] += 1
    _prune_initializers(graph)
    counts["nodes_before"], counts["nodes_after"] = before, len(graph.node)
    return model_proto, counts


# ------------------------------------------------------------------------------- building and files


def build_onnx(model, *, method="auto", opset=DEFAULT_OPSET, optimize=True):
    """(``onnx.ModelProto``, info) of ``model`` (encoder, tagger or pretrainer's encoder).

    ``method``: "direct" (SampleCNN and taggers on it; any backend), "tf2onnx" (any model;
    TensorFlow backend) or "auto" (direct where supported, else tf2onnx). ``optimize`` folds
    BatchNorm into the convolutions (``optimize_onnx``). The graph is checked by
    ``onnx.checker``; parity with Keras is not checked here (see ``parity``).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown ONNX method {method!r}; choose from {METHODS}.")
    onnx = _require("onnx")
    check_float32(model)
    proto, used = None, method
    if method in ("auto", "direct"):
        try:
            proto, used = direct_graph(model, opset), "direct"
        except NotImplementedError:
            if method == "direct":
                raise
    if proto is None:
        proto, used = tf2onnx_graph(model, opset), "tf2onnx"
    counts = None
    if optimize:
        proto, counts = optimize_onnx(proto)
    proto.producer_name = "keras_clmr"
    onnx.checker.check_model(proto)
    exporter = (
        f"keras {keras.__version__} model.export(format='onnx') (tf2onnx)"
        if used == "tf2onnx"
        else "keras_clmr direct ONNX builder"
    )
    return proto, {"opset": int(opset), "method": used, "exporter": exporter, "optimized": counts}


def export_onnx(model, path, *, opset=DEFAULT_OPSET, optimize=True, method="tf2onnx"):
    """Write ``model`` (encoder or tagger) as an ONNX file at ``path`` (atomically); return info.

    ``build_onnx`` with ``method`` (default: Keras' own exporter, tf2onnx), then
    ``onnx.save``. Does not check parity (see ``check_onnx_parity``).
    """
    onnx = _require("onnx")
    if method == "tf2onnx":
        require_tensorflow()
    samples = input_samples(model)
    start = time.perf_counter()
    proto, info = build_onnx(model, method=method, opset=opset, optimize=optimize)
    with io.atomic_path(path) as temporary:
        onnx.save(proto, temporary)
    seconds = time.perf_counter() - start
    return {
        "file": os.path.basename(path),
        "opset": info["opset"],
        "inputs": [INPUT_NAME],
        "outputs": output_names(model),
        "input_shape": ["batch", samples],
        "exporter": info["exporter"],
        "optimized": info["optimized"],
        "export_seconds": round(seconds, 2),
    }


def onnx_session(path_or_proto, threads=None):
    """An ONNX Runtime CPU session for an ONNX file, or for a ``ModelProto`` held in memory."""
    onnxruntime = _require("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    if hasattr(path_or_proto, "SerializeToString"):
        source = path_or_proto.SerializeToString()
    else:
        source = os.fspath(path_or_proto)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session, audio):
    """{output name: array} of an ONNX session on ``audio`` [batch, samples]."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT_NAME: np.asarray(audio, np.float32)})))


def onnx_predictor(model):
    """A callable [n, input_samples] -> numpy outputs running ``model`` in ONNX Runtime.

    Built with the direct front end (SampleCNN, and a tagger on one: its ``tags``), BatchNorm
    folded; raises NotImplementedError for other models.
    """
    proto, _ = build_onnx(model, method="direct")
    session = onnx_session(proto)
    name = TAG_OUTPUT if is_tagger(model) else EMBED_OUTPUT
    return lambda batch: session.run([name], {INPUT_NAME: np.asarray(batch, np.float32)})[0]
