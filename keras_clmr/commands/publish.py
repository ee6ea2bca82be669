"""Publish a preset folder (card, weights, exports) to the Hugging Face Hub.

    keras-clmr publish --preset_dir=out/clmr-mtat-tagger --repo_id=keras-clmr/clmr-mtat-tagger
    keras-clmr publish --preset_dir=out/demo --repo_id=me/demo --dry_run  # files + card only
    keras-clmr publish --preset=runs/demo --dry_run   # a run folder: preset + card staged aside

``--preset_dir`` (alias ``--preset``) is a preset folder, a registry name or hf:// handle (its
cached folder), a ``.keras`` file or a pretraining run folder: those two are saved as a preset
with its card in a temporary folder first (run ``keras-clmr export`` to include SavedModel and
ONNX). The folder is validated before any network call (required files, sha256s in metadata.json,
a card with valid YAML, safe config). The token comes from HF_TOKEN or the huggingface_hub
login (`hf auth login`). Transient Hub errors are retried with backoff. Prints the commit URL.
Exit codes: 0 done, 1 refused or failed.
"""

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    flags.DEFINE_string(
        "preset_dir",
        None,
        "The preset folder to upload (or a registry name, hf:// handle, .keras file or "
        "pretraining run folder).",
        flag_values=flag_values,
    )
    flags.DEFINE_alias("preset", "preset_dir", flag_values=flag_values)
    flags.DEFINE_string(
        "repo_id",
        None,
        "The Hub repository, org/name (with --dry_run, default: your-name/<folder name>).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "private", False, "Create the repository as private.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "commit_message",
        None,
        "Commit message (default: 'Upload <name> (keras_clmr <version>)').",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "dry_run",
        False,
        "Validate, print the files and the card, call nothing.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "attempts", 4, "Attempts per Hub call on transient errors.", flag_values=flag_values
    )


def run_from_flags():
    import tempfile

    from keras_clmr.export import publish

    if not FLAGS.preset_dir or not (FLAGS.repo_id or FLAGS.dry_run):
        raise app.UsageError("--preset_dir and --repo_id are required.")
    with tempfile.TemporaryDirectory(prefix="keras-clmr-publish-") as staging:
        try:
            folder = publishable(FLAGS.preset_dir, staging)
        except (ValueError, OSError) as error:  # SourceError, PresetError, a bad .keras file
            print(f"error: {error}", file=sys.stderr)
            return 1
        return _publish(publish, folder)


def publishable(argument, staging):
    """The folder to publish: a local or cached preset, or a run / .keras saved with its card."""
    from keras_clmr.export import card, sources

    source = sources.identify(argument)
    if source.kind in ("run", "keras_file"):
        name = os.path.splitext(os.path.basename(os.path.normpath(argument)))[0]
        folder = sources.save_as_preset(source, os.path.join(staging, name))
        card.write_card(folder)
        return folder
    return sources.as_preset_folder(argument)[0]


def _publish(publish, folder):
    repo_id = FLAGS.repo_id or f"your-name/{os.path.basename(os.path.normpath(folder))}"
    try:
        result = publish.publish(
            folder,
            repo_id,
            private=FLAGS.private,
            commit_message=FLAGS.commit_message,
            dry_run=FLAGS.dry_run,
            attempts=FLAGS.attempts,
            log=lambda message: print(message, file=sys.stderr),
        )
    except publish.PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a non-transient Hub error (auth, permissions, ...)
        print(
            f"error: the Hub refused the upload: {type(error).__name__}: {error}", file=sys.stderr
        )
        return 1
    if FLAGS.dry_run:
        print(
            f"Dry run: would create {result['repo_id']} "
            f"({'private' if result['private'] else 'public'}, exist_ok) "
            f"and upload {len(result['files'])} files ({result['total_bytes']:,} bytes) from "
            f"{result['preset_dir']} "
            f"with the message {result['commit_message']!r}:"
        )
        for rel, size in result["files"].items():
            print(f"  {rel}  {size:,} bytes")
        print("\n----- README.md -----")
        print(result["card"])
        return 0
    print(json.dumps({k: v for k, v in result.items() if k != "card"}, indent=2))
    print(f"Committed: {result['commit_url']}")
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    return run_from_flags()
