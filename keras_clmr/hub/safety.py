"""The config allow-list: presets deserialize only keras_clmr's classes and inert core Keras.

A preset's config.json is data from the internet. ``check_config_safe`` accepts an entry only
when it is on a fixed list: a class keras_clmr registered, a core Keras layer that runs no
stored code, an initializer/regularizer/constraint class, a dtype policy, or a named
activation/initializer/regularizer/constraint from the lists below. Anything else (``Lambda``,
wrapped torch/JAX modules, ``__lambda__``, ``keras.config.set_epsilon`` as an "activation", a
foreign module) is refused before ``keras.saving`` sees it.
"""

import importlib

import keras

from keras_clmr.presets import PresetError

# Core Keras layers that can carry code or unreviewed objects in their config.
_REFUSED_CORE_CLASSES = {"Lambda", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "TFSMLayer"}
# Plain-data markers of Keras' serialization format.
_DATA_MARKERS = {"__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"}
# Functions a config may name, by kind (a fixed list: a new Keras function is not allowed until
# it is reviewed and added here).
ACTIVATIONS = frozenset(
    "celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh "
    "leaky_relu linear log_sigmoid log_softmax mish relu relu6 selu sigmoid silu soft_shrink "
    "softmax softplus softsign sparse_plus sparse_sigmoid sparsemax squareplus swish tanh "
    "tanh_shrink threshold".split()
)
INITIALIZERS = frozenset(
    "constant glorot_normal glorot_uniform he_normal he_uniform identity lecun_normal "
    "lecun_uniform ones orthogonal random_normal random_uniform truncated_normal "
    "variance_scaling zeros".split()
)
REGULARIZERS = frozenset("l1 l2 l1_l2 orthogonal_regularizer".split())
CONSTRAINTS = frozenset("max_norm min_max_norm non_neg unit_norm".split())
_NAMED_BY_KEY_SUFFIX = {
    "activation": ACTIVATIONS,
    "initializer": INITIALIZERS,
    "regularizer": REGULARIZERS,
    "constraint": CONSTRAINTS,
}
# Core Keras modules whose classes a config may name, with the base class they must derive from.
_CORE_MODULES = {
    "keras.layers": "Layer",
    "keras.initializers": "Initializer",
    "keras.regularizers": "Regularizer",
    "keras.constraints": "Constraint",
}
_DTYPE_POLICIES = {"DTypePolicy", "FloatDTypePolicy"}
MAX_DEPTH = 64


class UnsafePresetError(PresetError):
    """A config that names a class keras_clmr does not deserialize (code or foreign classes)."""


def check_config_safe(config, where="config", _depth=0):
    """Refuse a serialized config naming anything outside the allow-list (UnsafePresetError)."""
    if _depth > MAX_DEPTH:
        raise UnsafePresetError(
            f"Refusing to load this preset: {where} is nested more than {MAX_DEPTH} levels deep, "
            "which no keras_clmr model needs; the config is damaged or hostile. Re-download it."
        )
    if isinstance(config, list):
        for i, item in enumerate(config):
            check_config_safe(item, f"{where}[{i}]", _depth + 1)
        return
    if not isinstance(config, dict):
        return
    if "class_name" in config:
        _check_entry(config, where)
    for key, value in config.items():
        if isinstance(value, (dict, list)):
            check_config_safe(value, f"{where}.{key}", _depth + 1)
        elif isinstance(value, str) and not (
            "class_name" in config and key in ("module", "class_name", "registered_name")
        ):
            _check_named(str(key), value, f"{where}.{key}")


def _refuse(where, what, why):
    raise UnsafePresetError(
        f"Refusing to load this preset: {where} names {what}, {why}. keras_clmr presets may only "
        "contain keras_clmr's registered classes, core Keras layers that run no stored code, and "
        "named activations/initializers/regularizers/constraints from keras_clmr.hub.safety's "
        "lists. If you trust this file, load it yourself with keras.saving (safe_mode=False)."
    )


def _check_named(key, value, where):
    """A string under an ``*activation``/``*initializer``/... key must be a listed name."""
    allowed = next(
        (names for suffix, names in _NAMED_BY_KEY_SUFFIX.items() if key.endswith(suffix)), None
    )
    if allowed is not None and value not in allowed:
        _refuse(where, repr(value), f"which is not a known {key.split('_')[-1]} name")
    if value.startswith(("keras.", "keras>", "builtins.", "os.", "__")):
        _refuse(where, repr(value), "a Python object path")


def _check_core_class(module, class_name, where):
    base_name = _CORE_MODULES.get(module)
    if base_name is None:
        if module == "keras" and class_name in _DTYPE_POLICIES | {"Sequential"}:
            return
        _refuse(where, f"{module}.{class_name}", "a Keras module outside the allow-list")
    namespace = importlib.import_module(module)
    obj = getattr(namespace, class_name, None) if not class_name.startswith("_") else None
    base = getattr(namespace, base_name)
    if not (isinstance(obj, type) and issubclass(obj, base)) or obj is base:
        _refuse(where, f"{module}.{class_name}", f"which is not a {base_name} class of Keras")


def _check_entry(entry, where):
    class_name = entry.get("class_name")
    module = entry.get("module")
    registered = entry.get("registered_name")
    if class_name in _DATA_MARKERS:
        return
    if not isinstance(class_name, str) or class_name == "__lambda__" or class_name.startswith("__"):
        _refuse(where, repr(class_name), "serialized code or an unknown object kind")
    if not isinstance(module, str):
        _refuse(where, repr(class_name), "without a module")
    if module == "keras_clmr" or module.startswith("keras_clmr."):
        if registered != f"keras_clmr>{class_name}":
            _refuse(
                where,
                f"{module}.{class_name}",
                f"registered as {registered!r}, not keras_clmr>{class_name}",
            )
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UnsafePresetError(
                f"{where} needs {module}.{class_name}, which this keras_clmr ({_version()}) does "
                f"not have ({error}); upgrade keras_clmr."
            ) from error
        obj = keras.saving.get_registered_object(registered)
        if obj is None or not getattr(obj, "__module__", "").startswith("keras_clmr"):
            _refuse(where, registered, "which is not a class registered by keras_clmr")
        return
    if module == "keras" or module.startswith("keras."):
        if class_name in _REFUSED_CORE_CLASSES:
            _refuse(where, f"keras {class_name}", "which can run stored code")
        if class_name == "function":
            name = entry.get("config")
            if module != "keras.activations" or name not in ACTIVATIONS:
                _refuse(where, f"the function {module}.{name}", "which is not a listed activation")
            return
        if registered not in (None, class_name):
            _refuse(where, f"{class_name} registered as {registered!r}", "a custom object")
        _check_core_class(module, class_name, where)
        return
    _refuse(where, f"{module}.{class_name}", "a class outside keras_clmr and core Keras")


def _version():
    import keras_clmr

    return keras_clmr.__version__
