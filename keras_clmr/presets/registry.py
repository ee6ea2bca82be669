"""The preset registry: ``Preset`` entries (data), lookup with suggestions, and a printed table.

Each preset has up to two tasks: ``"embed"`` (the encoder) and, where the original authors
released a head, ``"tag"`` (encoder + MTAT head as a ``MusicTagger``). Where its weights come
from, in the order ``keras_clmr.hub`` tries them after its own cache:

* ``handles`` + ``revision``: a Hugging Face repository, used only when the registry records
  the commit to pin it to (``revision[task]``); an unpinned handle of a preset that has an
  official ``source`` is never followed (whoever controls the name would decide what loads);
* ``source``: the official release asset(s) (http(s) URLs), downloaded and converted locally on
  first use; ``assets`` records what is known of a URL's file (``size``, ``sha256``), checked
  before conversion;
* ``local_builder``: writes a complete preset folder (e.g. weights converted on first use
  from another installed package, as musicnn's are).

Built-in presets name it as data, by a dotted path ``"package.module:function"`` called
``function(preset_name, preset_dir, task)``; ``register_local_builder`` also accepts a callable
``builder(preset_dir, task)``. ``keras_clmr.hub`` imports and runs it only when needed.
"""

import dataclasses
import difflib
from collections.abc import Callable, Mapping

HUB_ORG = "keras-clmr"
TASKS = ("embed", "tag")


class PresetError(Exception):
    """A preset that cannot be resolved or loaded; the message says why and what to do."""


class UnknownPresetError(PresetError, LookupError):
    """No preset of that name; the message suggests the closest registered names."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """One registry entry. ``handles``, ``params`` and ``source`` are keyed by task."""

    name: str
    description: str
    architecture: str
    handles: Mapping[str, str | None]
    sample_rate: int
    input_samples: int
    params: Mapping[str, int | None] = dataclasses.field(default_factory=dict)
    scores: tuple = ()
    protocol: str = ""
    source: Mapping[str, str] = dataclasses.field(default_factory=dict)
    license: str = "apache-2.0"
    local_builder: str | Callable[[str, str], None] | None = None
    revision: Mapping[str, str] = dataclasses.field(default_factory=dict)
    assets: Mapping[str, Mapping] = dataclasses.field(default_factory=dict)

    def release_urls(self, task):
        """The official release files behind ``task`` (a head needs its encoder's too), or ()."""
        urls = [self.source.get("embed")] + ([self.source.get("tag")] if task == "tag" else [])
        if all(isinstance(u, str) and u.startswith(("https://", "http://")) for u in urls):
            return tuple(urls)
        return ()

    def pinned_handle(self, task):
        """``(hf handle, commit)`` when the registry pins a Hub copy of ``task``, else None."""
        handle, commit = self.handles.get(task), self.revision.get(task)
        return (handle, commit) if handle and commit else None

    @property
    def tasks(self):
        return tuple(
            task
            for task in TASKS
            if task in self.handles or (self.local_builder is not None and task in self.params)
        )


_REGISTRY = {}


def hub_handle(name):
    """The Hub handle of a repository of the maintainers' organisation."""
    return f"hf://{HUB_ORG}/{name}"


def register_preset(preset, overwrite=False):
    """Add a ``Preset`` to the registry (``overwrite=True`` to replace one)."""
    if not isinstance(preset, Preset):
        raise TypeError(
            f"register_preset expects a keras_clmr.presets.Preset, got {type(preset).__name__}."
        )
    if preset.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A preset named {preset.name!r} is already registered; pass "
            "overwrite=True to replace it."
        )
    unknown = set(preset.handles) - set(TASKS)
    if unknown:
        raise ValueError(
            f"Preset {preset.name!r}: unknown task(s) {sorted(unknown)}; tasks are {TASKS}."
        )
    for task, handle in preset.handles.items():
        if handle is not None and not handle.startswith("hf://"):
            raise ValueError(
                f"Preset {preset.name!r}: handle {handle!r} for task {task!r} must "
                "start with hf://."
            )
    if not preset.handles and preset.local_builder is None and not preset.release_urls("embed"):
        raise ValueError(
            f"Preset {preset.name!r} needs a Hub handle, a release source or a local_builder."
        )
    _REGISTRY[preset.name] = preset
    return preset


def register_local_builder(name, builder, tasks=("embed",)):
    """Attach ``builder(preset_dir, task)`` to preset ``name`` (converted-on-first-use presets).

    The builder must write a complete preset folder at ``preset_dir`` (which does not exist
    yet), e.g. with ``keras_clmr.save_preset(model, preset_dir)``. ``tasks`` lists the tasks it
    can build (used when the preset has no Hub handle for them).
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
        "a preset folder as a path."
    )


def _format_scores(preset):
    parts = [f"{s['dataset']} {s['metric']} {s['value']} ({s['head']})" for s in preset.scores]
    return "; ".join(parts) or "-"


def list_presets(print_table=True):
    """Print the registered presets (name, tasks, parameters, rate, scores); return their names."""
    names = preset_names()
    if print_table:
        rows = [
            ("name", "tasks", "params (embed/tag)", "sample rate", "published scores", "weights")
        ]
        for name in names:
            preset = _REGISTRY[name]
            params = "/".join(
                f"{preset.params[t]:,}" if preset.params.get(t) else "?" for t in preset.tasks
            )
            handle = preset.handles.get("embed") or "(built locally)"
            if preset.pinned_handle("embed"):
                handle = "{}@{}".format(*preset.pinned_handle("embed"))
            elif preset.release_urls("embed"):
                handle = "official release (converted on first use)"
            rows.append(
                (
                    name,
                    ",".join(preset.tasks),
                    params,
                    f"{preset.sample_rate} Hz",
                    _format_scores(preset),
                    handle,
                )
            )
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
