"""Writing model cards: a preset folder's README.md + model.json, and the registry's cards.

Rendering is ``keras_clmr.cards`` (pure); this module reads the folder, loads results.json
files (refusing those of another head), writes atomically (``keras_clmr.io``) and re-hashes
the folder's metadata.json so it stays a valid preset for ``keras_clmr.export.publish``.
``publishable_folder`` is the whole path of ``keras-clmr export``: any model the user has
(``keras_clmr.export.sources``) -> preset, exports, card and model.json, built aside and
swapped in whole.
"""

import json
import os

from keras_clmr import hub, io, presets
from keras_clmr.cards import (  # noqa: F401  (the card API in one place for callers)
    CARD_FILE,
    MODEL_JSON,
    ModelCardError,
    describe_metadata,
    describe_registry,
    model_json,
    render_card,
    require_input_shape,
)


def describe_folder(preset_dir):
    """The card inputs of a preset folder: its metadata.json, backbone class and exports."""
    metadata = hub.read_metadata(preset_dir)
    try:
        with open(os.path.join(preset_dir, hub.CONFIG_FILE)) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError):
        config = None
    exports = [
        name
        for name, present in (
            ("onnx", os.path.isfile(os.path.join(preset_dir, "model.onnx"))),
            ("savedmodel", os.path.isdir(os.path.join(preset_dir, "saved_model"))),
        )
        if present
    ]
    return describe_metadata(metadata, config, exports)


def card_license(preset_dir):
    """The license in the folder's current README.md YAML (an edit on the Hub stays), else None."""
    path = os.path.join(preset_dir, CARD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(path).data.to_dict().get("license")
    except Exception:  # an unparsable header: the card is re-rendered from the metadata
        return None


def read_results(path, dataset=None):
    """A keras_clmr ``results.json`` (``keras_clmr.evaluation``) as a card result."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ModelCardError(
            f"Cannot read evaluation results {path}: {error}. Pass a results.json written by "
            "training/linear_eval.py or training/supervised.py."
        ) from error
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise ModelCardError(f"{path} has no 'metrics' table; it is not a keras_clmr results.json.")
    results = dict(results)
    results["dataset"] = dataset or results.get("dataset") or "unknown"
    results["path"] = os.fspath(path)
    return results


def _write(folder, card, sidecar):
    os.makedirs(folder, exist_ok=True)
    io.atomic_write_text(os.path.join(folder, MODEL_JSON), json.dumps(sidecar, indent=2) + "\n")
    text = str(card)
    io.atomic_write_text(
        os.path.join(folder, CARD_FILE), text if text.endswith("\n") else text + "\n"
    )


def write_card(
    preset_dir, *, repo_id=None, results=(), training=None, license=None, update_metadata=True
):
    """Render the card of a preset folder into its README.md and model.json; re-hash metadata.json.

    ``results``: paths of keras_clmr results.json files, or ``(path, dataset)`` pairs.
    Returns (card, model.json dict).
    """
    preset_dir = os.fspath(preset_dir)
    info = describe_folder(preset_dir)
    require_input_shape(info)
    license = license or info.get("license") or card_license(preset_dir)
    if license:
        info["license"] = license
    loaded = [
        read_results(*r) if isinstance(r, (tuple, list)) else read_results(r) for r in results
    ]
    card = render_card(info, repo_id=repo_id, results=loaded, training=training)
    sidecar = model_json(info)
    _write(preset_dir, card, sidecar)
    if update_metadata:
        from keras_clmr.export import update_metadata as _update

        _update(
            preset_dir,
            card={
                "rendered_by": "keras_clmr.cards",
                "repo_id": repo_id,
                "results": [os.path.basename(r["path"]) for r in loaded],
            },
        )
    return card, sidecar


def registry_variants():
    """(name, task, folder name) of every published registry preset (one card per Hub repo)."""
    out = []
    for name in presets.preset_names():
        preset = presets.get_preset(name)
        seen = set()
        for task in preset.tasks:
            handle = preset.handles.get(task)
            if handle is None:
                continue
            repo = hub.parse_hf_handle(handle)[0].split("/")[1]
            if repo not in seen:
                seen.add(repo)
                out.append((name, task, repo))
    return out


def write_registry_cards(output_dir="model_cards"):
    """Write ``<output_dir>/<repo>/README.md`` and ``model.json`` for every registry preset."""
    written = []
    for name, task, repo in registry_variants():
        info = describe_registry(name, task)
        require_input_shape(info)
        card = render_card(
            info, repo_id=f"{presets.HUB_ORG}/{repo}", registry=presets.get_preset(name)
        )
        folder = os.path.join(output_dir, repo)
        _write(folder, card, model_json(info))
        written.append(folder)
    return written


def _unlisted(preset_dir, listed, parent, names):
    """copytree ``ignore``: the names under ``parent`` that metadata.json does not list."""
    rel = os.path.relpath(parent, preset_dir).replace(os.sep, "/")
    prefix = "" if rel == "." else rel + "/"
    wanted = {hub.METADATA_FILE, *listed}
    return [
        name
        for name in names
        if not any(f == prefix + name or f.startswith(prefix + name + "/") for f in wanted)
    ]


def publishable_folder(
    argument, output=None, formats="all", *, task=None, card=True, overwrite=False, **export_options
):
    """Preset + exports + card + model.json from any accepted argument, all or nothing.

    ``output`` defaults to the folder itself for a local preset (exports added in place).
    Everything is built in a temporary folder next to ``output`` that replaces it only when
    every step (save, export with parity, card) succeeded. Returns the export summary with
    ``source`` (the kind) and ``card`` added.
    """
    import shutil

    from keras_clmr.export.preset import export_preset, staged_output, user_entries_to_keep
    from keras_clmr.export.sources import SourceError, as_preset_folder, identify, save_as_preset

    source = identify(argument)
    if output is None:
        if source.kind != "preset":
            raise SourceError(
                f"{argument} is not a local preset folder: pass --output, the folder to write "
                "(the Hugging Face and keras_clmr caches are never modified)."
            )
        output = argument
    output = os.path.abspath(os.fspath(output))
    in_place = source.kind == "preset" and os.path.abspath(argument) == output
    io.recover_folder(output)
    # An earlier output (the files its metadata.json lists) or the preset itself is replaced;
    # the user's files there are refused unless overwrite, and kept either way.
    keep = user_entries_to_keep(output, overwrite=overwrite, in_place=in_place)
    with staged_output(output, keep=keep) as work:
        if source.kind in ("keras_file", "run"):
            save_as_preset(source, work, task=task)
        else:
            folder, _ = as_preset_folder(argument, task=task)
            listed = hub.read_metadata(folder)["files"]
            shutil.copytree(
                folder,
                work,
                symlinks=False,
                ignore=lambda parent, names: _unlisted(folder, listed, parent, names),
            )
        summary = export_preset(work, work, formats, task=task, **export_options)
        if card:
            write_card(work)
    summary["output"] = output
    summary["metadata"] = os.path.join(output, "metadata.json")
    summary["source"] = source.kind
    summary["card"] = os.path.join(output, CARD_FILE) if card else None
    return summary
