"""The registry of named presets, as data: handles, sources, sizes, licences, published scores.

``keras_clmr.load_pretrained(name, task=...)`` resolves them (see ``keras_clmr.hub``). The
maintainers publish the converted weights on the Hugging Face Hub under the ``keras-clmr``
organisation (``hf://keras-clmr/<name>`` and ``hf://keras-clmr/<name>-tagger``). Scores are the
original authors' published figures, with the protocol behind them; keras_clmr does not
re-measure them. Presets built locally (musicnn) go to the keras_clmr cache
(``$KERAS_CLMR_CACHE``, default ``~/.cache/keras_clmr``).
"""

from keras_clmr.presets import clmr, musicnn
from keras_clmr.presets.registry import (  # noqa: F401  (_REGISTRY: tests patch it)
    _REGISTRY,
    HUB_ORG,
    TASKS,
    Preset,
    PresetError,
    UnknownPresetError,
    get_preset,
    hub_handle,
    list_presets,
    preset_names,
    register_local_builder,
    register_preset,
    suggest,
)

for _preset in (*clmr.PRESETS, *musicnn.PRESETS):
    register_preset(_preset)
del _preset

__all__ = [
    "HUB_ORG",
    "TASKS",
    "Preset",
    "PresetError",
    "UnknownPresetError",
    "get_preset",
    "hub_handle",
    "list_presets",
    "preset_names",
    "register_local_builder",
    "register_preset",
    "suggest",
]
