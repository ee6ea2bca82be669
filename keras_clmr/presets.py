"""The registry of named presets: name -> Hub handle(s), description, sizes, published scores.

Each preset has one handle per task: ``"embed"`` (the encoder) and, where the original
authors released a head, ``"tag"`` (encoder + MTAT head as a ``MusicTagger``).
``keras_clmr.load_pretrained(name, task=...)`` resolves them (see ``keras_clmr.hub``).

The maintainers publish the converted weights on the Hugging Face Hub under the
``keras-clmr`` organisation (``hf://keras-clmr/<name>`` and ``hf://keras-clmr/<name>-tagger``).
Scores quoted here are the original authors' published figures, with the protocol behind
them; they are not re-measured by keras_clmr.

A preset may also carry a *local builder*: a callable ``builder(preset_dir, task)`` that
writes a complete preset folder (usually with ``keras_clmr.save_preset``) at
``preset_dir`` when the Hub copy is unavailable, e.g. weights converted on first use
from another installed package. ``load_pretrained`` stores what it builds in the
keras_clmr cache (``$KERAS_CLMR_CACHE``, default ``~/.cache/keras_clmr``).
"""

import dataclasses
import difflib
from typing import Callable, Mapping, Optional

HUB_ORG = "keras-clmr"
TASKS = ("embed", "tag")


class PresetError(Exception):
    """A preset that cannot be resolved or loaded; the message says why and what to do."""


class UnknownPresetError(PresetError, LookupError):
    """No preset of that name; the message suggests the closest registered names."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """One registry entry. ``handles`` and ``params`` are keyed by task ("embed", "tag")."""

    name: str
    description: str
    architecture: str
    handles: Mapping[str, Optional[str]]
    sample_rate: int
    input_samples: int
    params: Mapping[str, Optional[int]] = dataclasses.field(default_factory=dict)
    scores: tuple = ()
    protocol: str = ""
    source: Mapping[str, str] = dataclasses.field(default_factory=dict)
    license: str = "apache-2.0"
    local_builder: Optional[Callable[[str, str], None]] = None

    @property
    def tasks(self):
        return tuple(task for task in TASKS if task in self.handles or
                     (self.local_builder is not None and task in self.params))


_REGISTRY = {}


def register_preset(preset, overwrite=False):
    """Add a ``Preset`` to the registry (``overwrite=True`` to replace one)."""
    if not isinstance(preset, Preset):
        raise TypeError(f"register_preset expects a keras_clmr.presets.Preset, got {type(preset).__name__}.")
    if preset.name in _REGISTRY and not overwrite:
        raise ValueError(f"A preset named {preset.name!r} is already registered; pass overwrite=True to replace it.")
    unknown = set(preset.handles) - set(TASKS)
    if unknown:
        raise ValueError(f"Preset {preset.name!r}: unknown task(s) {sorted(unknown)}; tasks are {TASKS}.")
    for task, handle in preset.handles.items():
        if handle is not None and not handle.startswith("hf://"):
            raise ValueError(f"Preset {preset.name!r}: handle {handle!r} for task {task!r} must start with hf://.")
    if not preset.handles and preset.local_builder is None:
        raise ValueError(f"Preset {preset.name!r} needs at least one Hub handle or a local_builder.")
    _REGISTRY[preset.name] = preset
    return preset


def register_local_builder(name, builder, tasks=("embed",)):
    """Attach ``builder(preset_dir, task)`` to preset ``name`` (the hook for converted-on-first-use presets).

    The builder must write a complete preset folder at ``preset_dir`` (which does not exist
    yet), e.g. by building the model and calling ``keras_clmr.save_preset(model, preset_dir)``.
    ``tasks`` lists the tasks it can build (used when the preset has no Hub handle for them).
    """
    preset = get_preset(name)
    params = dict(preset.params)
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; tasks are {TASKS}.")
        params.setdefault(task, None)
    _REGISTRY[name] = dataclasses.replace(preset, local_builder=builder, params=params)
    return _REGISTRY[name]


def preset_names():
    return sorted(_REGISTRY)


def suggest(name, n=3):
    """The registered names closest to ``name`` (difflib)."""
    return difflib.get_close_matches(str(name), preset_names(), n=n, cutoff=0.4)


def get_preset(name):
    """The ``Preset`` called ``name``; raises ``UnknownPresetError`` with suggestions."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = suggest(name)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownPresetError(
        f"Unknown preset {name!r}.{hint} Registered presets: {', '.join(preset_names())} "
        "(keras_clmr.list_presets() describes them). A Hub repository is written hf://org/name, "
        "a preset folder as a path.")


def _format_scores(preset):
    parts = []
    for score in preset.scores:
        parts.append(f"{score['dataset']} {score['metric']} {score['value']} ({score['head']})")
    return "; ".join(parts) or "-"


def list_presets(print_table=True):
    """Print the registered presets (name, tasks, parameters, rate, scores); return their names."""
    names = preset_names()
    if print_table:
        rows = [("name", "tasks", "params (embed/tag)", "sample rate", "published scores", "handle")]
        for name in names:
            preset = _REGISTRY[name]
            params = "/".join(f"{preset.params[t]:,}" if preset.params.get(t) else "?" for t in preset.tasks)
            handle = preset.handles.get("embed") or "(built locally)"
            rows.append((name, ",".join(preset.tasks), params, f"{preset.sample_rate} Hz",
                         _format_scores(preset), handle))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        for i, row in enumerate(rows):
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
            if i == 0:
                print("  ".join("-" * width for width in widths))
        for name in names:
            print(f"\n{name}: {_REGISTRY[name].description}")
            if _REGISTRY[name].protocol:
                print(f"  protocol: {_REGISTRY[name].protocol}")
    return names


# ---------------------------------------------------------------------------------------------
# Built-in presets. Scores: clmr_reference.md §5 (CLMR README, MTAT, the original authors').

_SAMPLE_CNN_PARAMS = 2_368_512
_MTAT_HEAD_PARAMS = 512 * 50 + 50
_CLMR_PROTOCOL = (
    "MagnaTagATune (50 tags), encoder frozen; head trained on 59049-sample crops; test: each "
    "track cut into consecutive non-overlapping 59049-sample chunks, per-chunk sigmoid "
    "outputs averaged, macro ROC-AUC / PR-AUC (sklearn). Figures from the CLMR README, "
    "not re-measured by keras_clmr.")
_CLMR_RELEASES = "https://github.com/Spijkervet/CLMR/releases/download"


def _hub(name):
    return f"hf://{HUB_ORG}/{name}"


register_preset(Preset(
    name="clmr-mtat",
    description=("CLMR 2.0 release: SampleCNN pretrained with SimCLR on MagnaTagATune "
                 "(48 pairs = 96 views per batch, 10,000 epochs), 22050 Hz; 'tag' adds the released linear MTAT head."),
    architecture="SampleCNN",
    handles={"embed": _hub("clmr-mtat"), "tag": _hub("clmr-mtat-tagger")},
    sample_rate=22050, input_samples=59049,
    params={"embed": _SAMPLE_CNN_PARAMS, "tag": _SAMPLE_CNN_PARAMS + _MTAT_HEAD_PARAMS},
    scores=(
        {"task": "tag", "dataset": "MTAT", "metric": "ROC-AUC", "value": 88.7, "head": "linear"},
        {"task": "tag", "dataset": "MTAT", "metric": "PR-AUC", "value": 35.6, "head": "linear"},
        {"task": "tag", "dataset": "MTAT", "metric": "ROC-AUC", "value": 89.3, "head": "mlp"},
        {"task": "tag", "dataset": "MTAT", "metric": "PR-AUC", "value": 36.0, "head": "mlp"},
    ),
    protocol=_CLMR_PROTOCOL,
    source={"embed": f"{_CLMR_RELEASES}/2.0/clmr_checkpoint_10000.zip",
            "tag": f"{_CLMR_RELEASES}/2.0/finetuner_checkpoint_200.zip"},
))

register_preset(Preset(
    name="clmr-mtat-1550",
    description=("CLMR 1.0 release: SampleCNN pretrained with SimCLR on MagnaTagATune "
                 "(batch 48, 1,550 epochs), 22050 Hz; 'tag' adds the released linear MTAT head."),
    architecture="SampleCNN",
    handles={"embed": _hub("clmr-mtat-1550"), "tag": _hub("clmr-mtat-1550-tagger")},
    sample_rate=22050, input_samples=59049,
    params={"embed": _SAMPLE_CNN_PARAMS, "tag": _SAMPLE_CNN_PARAMS + _MTAT_HEAD_PARAMS},
    scores=(
        {"task": "tag", "dataset": "MTAT", "metric": "ROC-AUC", "value": 87.71, "head": "linear"},
        {"task": "tag", "dataset": "MTAT", "metric": "PR-AUC", "value": 34.27, "head": "linear"},
        {"task": "tag", "dataset": "MTAT", "metric": "ROC-AUC", "value": 88.47, "head": "mlp"},
        {"task": "tag", "dataset": "MTAT", "metric": "PR-AUC", "value": 34.96, "head": "mlp"},
    ),
    protocol=_CLMR_PROTOCOL,
    source={"embed": f"{_CLMR_RELEASES}/1.0/clmr_checkpoint_1550.pt",
            "tag": f"{_CLMR_RELEASES}/1.0-l/finetuner_checkpoint_20.pt"},
))

register_preset(Preset(
    name="pemr-mtat",
    description=("PEMR release: FCN on log-mel (128 x 462 frames per 59049-sample window at "
                 "22050 Hz) pretrained on MagnaTagATune (batch 48, 300 epochs). Encoder only: "
                 "the authors released no tagging head."),
    architecture="FCN",
    handles={"embed": _hub("pemr-mtat")},
    sample_rate=22050, input_samples=59049,
    params={"embed": 371_460},  # 370,562 trainable + 898 BatchNorm statistics (FCN)
    scores=(),
    protocol="No published PEMR scores were verified (pemr_and_peers.md Part A).",
    source={"embed": "https://github.com/yaoodng7/PEMR/releases/download/pre-trained/pre-trained_model.ckpt"},
))
