"""Export a preset folder (or a keras.Model) in every format, parity-checked and recorded.

``export_preset`` writes ``model.onnx`` and/or ``saved_model/`` into a preset folder (a copy when
the source is a registry name, a Hub handle or the cache), keeps a file only after its parity
check passed, and records settings, parity figures and file hashes in ``metadata.json``.
"""

import json
import os
import shutil

import keras

from keras_clmr import hub, io
from keras_clmr.export.onnx import export_onnx
from keras_clmr.export.parity import PARITY_ATOL, PARITY_BATCHES, checked_parity
from keras_clmr.export.savedmodel import write_savedmodel
from keras_clmr.export.signature import (
    DEFAULT_OPSET,
    FORMATS,
    ONNX_FILE,
    SAVEDMODEL_DIR,
    ExportError,
    input_samples,
    require_tensorflow,
)
from keras_clmr.models import encoder_of, is_tagger


def update_metadata(preset_dir, **fields):
    """Set top-level ``fields`` in ``metadata.json`` and re-hash every file (atomically)."""
    metadata = hub.read_metadata(preset_dir)
    metadata.update(io.to_jsonable(fields))
    metadata["files"] = hub.hash_folder(preset_dir)
    io.atomic_write_json(os.path.join(preset_dir, hub.METADATA_FILE), metadata)
    return metadata


def load_model(name_or_handle, task=None):
    """(model, preset folder) for a registry name, an hf:// handle or a preset folder."""
    folder = hub.resolve(name_or_handle, task=task)
    return hub.load_preset(folder, task=task), folder


def _copy_preset(source, target):
    """Copy preset folder ``source`` to ``target`` (atomically, following HF-cache symlinks)."""
    with io.atomic_folder(target, overwrite=True) as temporary:
        shutil.copytree(
            source,
            temporary,
            symlinks=False,
            ignore=shutil.ignore_patterns(".*"),
            dirs_exist_ok=True,
        )
    return target


def parse_formats(formats):
    """A tuple of export formats from "savedmodel", "onnx", "all" or a list of them."""
    if isinstance(formats, str):
        formats = FORMATS if formats == "all" else (formats,)
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(
            f"Unknown export format(s) {unknown or formats}; choose from {FORMATS} or 'all'."
        )
    return formats


def _hash_tree(folder):
    return {
        f"{os.path.basename(folder)}/{rel}": entry for rel, entry in hub.hash_folder(folder).items()
    }


def _model_attribute(model, name):
    value = getattr(model, name, None)
    return value if value is not None else getattr(encoder_of(model), name, None)


def _export_onnx_checked(model, output, opset, optimize, batches, atol):
    target = os.path.join(output, ONNX_FILE)
    with io.atomic_path(target) as staged:
        info = export_onnx(model, staged, opset=opset, optimize=optimize)
        info["parity"] = checked_parity("onnx", model, staged, batches=batches, atol=atol)
    info["file"] = ONNX_FILE
    info.update(sha256=io.sha256_file(target), size=os.path.getsize(target))
    return info


def _export_savedmodel_checked(model, output, batches, atol):
    target = os.path.join(output, SAVEDMODEL_DIR)
    with io.atomic_folder(target, overwrite=True) as staged:
        info = write_savedmodel(model, staged)
        info["parity"] = checked_parity("savedmodel", model, staged, batches=batches, atol=atol)
    info["folder"] = SAVEDMODEL_DIR
    info["files"] = _hash_tree(target)
    return info


def export_preset(
    model,
    output=None,
    formats="all",
    *,
    task=None,
    opset=DEFAULT_OPSET,
    optimize=True,
    atol=PARITY_ATOL,
    batches=PARITY_BATCHES,
    record=True,
):
    """Export a preset (registry name, hf:// handle, folder) or a keras.Model, parity-checked.

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
    require_tensorflow()
    formats = parse_formats(formats)
    source_dir = None
    if not isinstance(model, keras.Model):
        handle = os.fspath(model)
        if output is None:
            if not os.path.isdir(handle):
                raise ExportError(
                    f"{handle} is not a local preset folder (a registry name or Hub handle): pass "
                    "--output, the folder to write (the Hugging Face and keras_clmr caches are "
                    "never modified)."
                )
            output = handle
        model, source_dir = load_model(handle, task=task)
    elif output is None:
        raise ExportError("Exporting a keras.Model needs an output folder.")
    output = os.path.abspath(os.fspath(output))
    if source_dir is not None and os.path.abspath(source_dir) != output:
        _copy_preset(source_dir, output)
    os.makedirs(output, exist_ok=True)
    is_preset = os.path.isfile(os.path.join(output, hub.METADATA_FILE))
    summary = {
        "output": output,
        "model": type(model).__name__,
        "task": "tag" if is_tagger(model) else "embed",
        "input_samples": input_samples(model),
        "sample_rate": _model_attribute(model, "sample_rate"),
        "exports": {},
    }
    for fmt in formats:
        if fmt == "onnx":
            info = _export_onnx_checked(model, output, opset, optimize, batches, atol)
        else:
            info = _export_savedmodel_checked(model, output, batches, atol)
        summary["exports"][fmt] = info
    if record and is_preset:
        metadata = hub.read_metadata(output)
        exports = dict(metadata.get("exports") or {})
        exports.update(summary["exports"])
        update_metadata(output, exports=exports)
        summary["metadata"] = os.path.join(output, hub.METADATA_FILE)
    return summary


def summary_json(summary):
    """The export summary as indented JSON (numpy values converted)."""
    return json.dumps(io.to_jsonable(summary), indent=2)
