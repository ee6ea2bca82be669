"""The registry of named presets, as data: handles, sources, sizes, licences, published scores.

``keras_clmr.load_pretrained(name, task=...)`` resolves them (see ``keras_clmr.hub``): the
keras_clmr cache (``$KERAS_CLMR_CACHE``, default ``~/.cache/keras_clmr``), then a Hugging Face
repository only where a commit is pinned (none today), then the official release file
(CLMR, PEMR: downloaded and converted locally on first use) or a local builder (musicnn: from
the installed wheel). Scores are the original authors' published figures, with the protocol
behind them; keras_clmr does not re-measure them.
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
