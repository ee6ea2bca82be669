"""The config allow-list: presets deserialize only keras_clmr's classes and inert core Keras.

A preset's config.json is data from the internet; ``check_config_safe`` refuses any entry
that names code (``Lambda``, wrapped torch/JAX modules, ``__lambda__``) or a class outside
keras_clmr's registered ones and core Keras, before ``keras.saving`` sees it.
"""

import importlib

import keras

from keras_clmr.presets import PresetError

# Core Keras classes that can carry code or unreviewed objects in their config.
_REFUSED_CORE_CLASSES = {"Lambda", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "TFSMLayer"}
# Plain-data markers of Keras' serialization format.
_DATA_MARKERS = {"__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"}


class UnsafePresetError(PresetError):
    """A config that names a class keras_clmr does not deserialize (code or foreign classes)."""


def check_config_safe(config, where="config"):
    """Refuse a serialized config naming anything but keras_clmr classes or inert core Keras."""
    if isinstance(config, list):
        for i, item in enumerate(config):
            check_config_safe(item, f"{where}[{i}]")
        return
    if not isinstance(config, dict):
        return
    if "class_name" in config:
        _check_entry(config, where)
    for key, value in config.items():
        if isinstance(value, (dict, list)):
            check_config_safe(value, f"{where}.{key}")


def _refuse(where, what, why):
    raise UnsafePresetError(
        f"Refusing to load this preset: {where} names {what}, {why}. keras_clmr presets may only "
        "contain keras_clmr's registered classes and core Keras layers that run no stored code. "
        "If you trust this file, load it yourself with keras.saving (safe_mode=False)."
    )


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
            return
        if registered not in (None, class_name):
            _refuse(where, f"{class_name} registered as {registered!r}", "a custom object")
        return
    _refuse(where, f"{module}.{class_name}", "a class outside keras_clmr and core Keras")


def _version():
    import keras_clmr

    return keras_clmr.__version__
