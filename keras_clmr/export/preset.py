"""Export a preset folder (or a keras.Model) in every format, parity-checked and recorded.

``export_preset`` writes ``model.onnx`` and/or ``saved_model/`` into a preset folder (a copy when
the source is a registry name, a Hub handle or the cache), keeps a file only after its parity
check passed, and records settings, parity figures and file hashes in ``metadata.json``.
"""

import contextlib
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

# The files keras_clmr writes into a preset folder (hashed when present).
TOOL_FILES = (hub.CONFIG_FILE, hub.WEIGHTS_FILE, hub.README_FILE, "model.json", ONNX_FILE)
WRITTEN_NAMES = frozenset((*TOOL_FILES, SAVEDMODEL_DIR, hub.METADATA_FILE))


def update_metadata(preset_dir, *, add=(), remove=(), **fields):
    """Set top-level ``fields`` in ``metadata.json`` and re-hash the files it lists (atomically).

    Only files the tool wrote are listed: those already in metadata.json, the files keras_clmr
    writes (``TOOL_FILES``, ``saved_model/``), and ``add`` (relative names), minus ``remove``
    names or folder prefixes. A stray file in the folder (notes, secrets) is never adopted.
    """
    metadata = hub.read_metadata(preset_dir)
    metadata.update(io.to_jsonable(fields))
    known = [name for name in TOOL_FILES if os.path.isfile(os.path.join(preset_dir, name))]
    saved_model = os.path.join(preset_dir, SAVEDMODEL_DIR)
    if os.path.isdir(saved_model):
        known += [f"{SAVEDMODEL_DIR}/{rel}" for rel in hub.hash_folder(saved_model)]
    listed = [rel for rel in [*metadata["files"], *known] if not _under_any(rel, remove)]
    listed = [rel for rel in listed if os.path.isfile(os.path.join(preset_dir, *rel.split("/")))]
    metadata["files"] = hub.hash_files(preset_dir, sorted(set(listed) | set(add)))
    io.atomic_write_json(os.path.join(preset_dir, hub.METADATA_FILE), metadata)
    return metadata


def _under_any(rel, names):
    return any(rel == name or rel.startswith(name.rstrip("/") + "/") for name in names)


def load_model(name_or_handle, task=None, skip=()):
    """(model, preset folder) for a registry name, an hf:// handle or a preset folder.

    ``skip``: listed files not verified (exports about to be rewritten, so that a re-export
    repairs a preset whose export was damaged).
    """
    folder = hub.resolve(name_or_handle, task=task)
    if skip:
        hub.verify_preset(folder, skip=skip)
        return hub.load_preset(folder, task=task, verify=False), folder
    return hub.load_preset(folder, task=task), folder


def _own_entries(folder):
    """Top-level names metadata.json of ``folder`` lists (a preset this tool wrote), else ()."""
    try:
        metadata = hub.read_metadata(folder)
    except hub.PresetError:
        return ()
    return {rel.split("/")[0] for rel in metadata["files"]} | {hub.METADATA_FILE}


def _is_temporary(name):
    return io._TEMP_PATTERN.match(name) is not None


def unlisted_entries(folder):
    """Top-level entries of ``folder`` that its metadata.json does not list: the user's files."""
    if not os.path.isdir(folder):
        return []
    own = _own_entries(folder)
    return sorted(
        name for name in os.listdir(folder) if name not in own and not _is_temporary(name)
    )


def user_entries_to_keep(output, overwrite=False, in_place=False):
    """The user's entries of an existing ``output`` folder, to be kept beside the new files.

    A folder holding files keras_clmr did not list (in its metadata.json) is refused, naming
    them, unless ``overwrite`` (or an in-place export of the preset itself). Either way those
    files are kept: a re-write replaces only the files the tool listed.
    """
    if os.path.lexists(output) and not os.path.isdir(output):
        raise io.OutputExistsError(f"{output} is a file, not a folder; choose another output.")
    strays = unlisted_entries(output)
    clashes = [name for name in strays if name in WRITTEN_NAMES]
    if clashes and not overwrite:  # in place too: a file of the user's under a name we write
        raise io.OutputExistsError(
            f"{output} holds {', '.join(clashes)}, not listed in its metadata.json, where "
            "keras_clmr writes its own; move them out or pass overwrite=True (--overwrite) to "
            "replace them."
        )
    if strays and not (overwrite or in_place):
        shown = ", ".join(strays[:8]) + (f" and {len(strays) - 8} more" if len(strays) > 8 else "")
        raise io.OutputExistsError(
            f"{output} holds files keras_clmr did not write ({shown}); choose a new output "
            "folder, move them out, or pass overwrite=True (--overwrite) to write next to them "
            "(the files keras_clmr listed are replaced, yours are kept and never listed)."
        )
    return strays


def copy_entries(source, target, names):
    """Copy top-level entries ``names`` of ``source`` into ``target`` (links stay links); a
    name ``target`` already holds is the tool's own new file and is not copied over."""
    for name in names:
        origin, copy = os.path.join(source, name), os.path.join(target, name)
        if os.path.lexists(copy):
            continue
        if os.path.isdir(origin) and not os.path.islink(origin):
            shutil.copytree(origin, copy, symlinks=True)
        else:
            shutil.copy2(origin, copy, follow_symlinks=False)


@contextlib.contextmanager
def staged_output(output, keep=()):
    """Yield ``work``, a folder that does not exist yet, inside a staging folder next to
    ``output``; on success its entries and copies of the user's ``keep`` entries of ``output``
    replace ``output`` whole (``keras_clmr.io.atomic_folder``).

    Writers that make their own temporaries (save_preset, export_preset) make them inside the
    staging folder, so a kill leaves one folder that the next run's ``recover_folder`` removes.
    """
    with io.atomic_folder(output, overwrite=True) as staging:
        work = os.path.join(staging, ".build")
        yield work
        for name in os.listdir(work):
            os.replace(os.path.join(work, name), os.path.join(staging, name))
        os.rmdir(work)
        copy_entries(output, staging, keep)


def _stage_preset(source, staging, listed):
    """Copy the files ``listed`` in ``source``'s metadata.json, and metadata.json itself."""
    for rel in [*listed, hub.METADATA_FILE]:
        origin = os.path.join(source, *rel.split("/"))
        target = os.path.join(staging, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(origin) and not os.path.islink(origin):
            shutil.copytree(origin, target, symlinks=True)
        else:
            shutil.copy2(origin, target)


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
    info["files"] = {
        f"{SAVEDMODEL_DIR}/{rel}": entry for rel, entry in hub.hash_folder(target).items()
    }
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
    overwrite=False,
):
    """Export a preset (registry name, hf:// handle, folder) or a keras.Model, parity-checked.

    Args:
        model: what to export. A keras.Model needs ``output``.
        output: the folder to write. For a preset, a copy of the preset folder with the
            exports added (default: the preset folder itself when it is a local folder; a
            registry name or hf:// handle needs ``output``, the cache is never modified).
        formats: "savedmodel", "onnx", "all" or a list.
        task: "embed" or "tag" when resolving a registry name (default: what is stored).
        record: add ``exports`` (settings, parity figures) to ``metadata.json`` and hash
            the new files, when ``output`` is a preset folder.
        overwrite: write into an ``output`` folder holding files this tool did not list
            (refused otherwise, naming them: :class:`keras_clmr.io.OutputExistsError`). Only
            the files keras_clmr listed are replaced; the user's stay, unlisted.

    The output folder is written whole or not at all (staged next to it, swapped in by
    rename): a kill never leaves a preset failing its sha256 check, and a re-run repairs an
    export damaged before. metadata.json lists only the files the tool wrote; files of the
    user's (in an in-place export, or with ``overwrite``) stay in the folder, unlisted.
    Returns a JSON-able summary with, per format, the file, parity figures, sha256 and size.
    An export that fails its parity check raises ``ParityError`` and leaves the folder as it
    was.
    """
    require_tensorflow()
    formats = parse_formats(formats)
    replaced = [ONNX_FILE if fmt == "onnx" else SAVEDMODEL_DIR for fmt in formats]
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
        model, source_dir = load_model(handle, task=task, skip=replaced)
    elif output is None:
        raise ExportError("Exporting a keras.Model needs an output folder.")
    output = os.path.abspath(os.fspath(output))
    io.recover_folder(output)
    in_place = source_dir is not None and os.path.abspath(source_dir) == output
    if source_dir is None and _own_entries(output):
        source_dir = output  # a keras.Model exported into its own preset folder
        in_place = True
    # The user's files in the output are refused unless overwrite (or in place), and kept.
    strays = user_entries_to_keep(output, overwrite=overwrite, in_place=in_place)
    listed = []
    if source_dir is not None:
        listed = [
            rel for rel in hub.read_metadata(source_dir)["files"] if not _under_any(rel, replaced)
        ]
    summary = {
        "output": output,
        "model": type(model).__name__,
        "task": "tag" if is_tagger(model) else "embed",
        "input_samples": input_samples(model),
        "sample_rate": _model_attribute(model, "sample_rate"),
        "exports": {},
    }
    with io.atomic_folder(output, overwrite=True) as staging:
        if source_dir is not None:
            _stage_preset(source_dir, staging, listed)
        copy_entries(output, staging, strays)
        for fmt in formats:
            if fmt == "onnx":
                info = _export_onnx_checked(model, staging, opset, optimize, batches, atol)
            else:
                info = _export_savedmodel_checked(model, staging, batches, atol)
            summary["exports"][fmt] = info
        if record and source_dir is not None:
            metadata = hub.read_metadata(staging)
            exports = dict(metadata.get("exports") or {})
            exports.update(summary["exports"])
            written = [ONNX_FILE] if "onnx" in formats else []
            if "savedmodel" in formats:
                written += list(summary["exports"]["savedmodel"]["files"])
            update_metadata(staging, add=written, remove=replaced, exports=exports)
            summary["metadata"] = os.path.join(output, hub.METADATA_FILE)
    return summary


def summary_json(summary):
    """The export summary as indented JSON (numpy values converted)."""
    return json.dumps(io.to_jsonable(summary), indent=2)
