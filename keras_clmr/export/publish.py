"""Publish a preset folder to the Hugging Face Hub (validated first, retried on transient errors).

``publish`` checks the folder before any network call: config.json, model.weights.h5,
README.md (a card whose YAML parses, with library_name and license) and metadata.json are
present, every file matches its sha256 in metadata.json, no unlisted file would be
uploaded, and the config deserializes in keras_clmr's safe mode. It then creates the
repository (``exist_ok=True``) and uploads the folder in one commit with
``HfApi.upload_folder``, retrying transient failures (connection errors, timeouts, HTTP
408/429/5xx) with exponential backoff. ``dry_run=True`` does the validation, returns the
plan (files, sizes, card) and calls nothing.
"""

import json
import os
import re
import time

from keras_clmr import hub

REQUIRED_FILES = (hub.CONFIG_FILE, hub.WEIGHTS_FILE, hub.README_FILE, hub.METADATA_FILE)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PublishError(RuntimeError):
    """A folder that must not be published, or a failed publication; the message says what to do."""


def HfApi(**kwargs):  # noqa: N802  (the test boundary: patch keras_clmr.export.publish.HfApi)
    from huggingface_hub import HfApi as _HfApi

    return _HfApi(**kwargs)


# ------------------------------------------------------------------------------- validation


def validate_repo_id(repo_id):
    if repo_id and repo_id.startswith("hf://"):
        repo_id = hub.parse_hf_handle(repo_id)[0]
    if not repo_id or not _REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise PublishError(
            f"--repo_id must be 'org/name' (letters, digits, '.', '_', '-'), got {repo_id!r}."
        )
    return repo_id


_GLOB_CHARACTERS = set("*?[]")


def _folder_files(folder):
    """Every file under ``folder``, dot files and nested ones included (nothing is skipped)."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            files.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return files


def validate_folder(preset_dir):
    """Check a preset folder for publication: {"metadata", "files", "card"}, else PublishError."""
    from huggingface_hub import ModelCard

    preset_dir = os.fspath(preset_dir)
    if not os.path.isdir(preset_dir):
        raise PublishError(
            f"{preset_dir}: no such folder. Pass --preset_dir, a folder written by "
            "keras_clmr.save_preset / python -m export.export."
        )
    missing = [
        name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(preset_dir, name))
    ]
    if missing:
        hint = (
            " Render the card with `python -m export.model_card --preset_dir=...`."
            if hub.README_FILE in missing
            else ""
        )
        raise PublishError(
            f"{preset_dir} is not a complete preset: missing {', '.join(missing)}.{hint}"
        )
    try:
        metadata = hub.verify_preset(preset_dir)
        with open(os.path.join(preset_dir, hub.CONFIG_FILE)) as f:
            hub.check_config_safe(json.load(f))
    except (hub.PresetError, json.JSONDecodeError) as error:
        raise PublishError(f"{preset_dir} fails validation: {error}") from error
    listed = set(metadata["files"]) | {hub.METADATA_FILE}
    present = _folder_files(preset_dir)
    unlisted = [rel for rel in present if rel not in listed]
    if unlisted:
        raise PublishError(
            f"{preset_dir} holds files metadata.json does not list, which would not be "
            f"published: {', '.join(unlisted[:10])}{' ...' if len(unlisted) > 10 else ''}. "
            "Move them out of the folder (publishing uploads exactly the files keras_clmr "
            "wrote and hashed)."
        )
    files = sorted(listed)
    odd = [rel for rel in files if _GLOB_CHARACTERS & set(rel)]
    if odd:
        raise PublishError(
            f"{preset_dir}: file names with glob characters cannot be published: {odd}."
        )
    if hub.README_FILE not in metadata["files"]:
        raise PublishError(
            f"{preset_dir}/metadata.json does not hash README.md; re-render the card with "
            "`python -m export.model_card --preset_dir=...`."
        )
    try:
        card = ModelCard.load(os.path.join(preset_dir, hub.README_FILE))
    except Exception as error:  # huggingface_hub raises ValueError/yaml errors for a bad header
        raise PublishError(
            f"{preset_dir}/README.md is not a valid model card ({error}); re-render it with "
            "`python -m export.model_card --preset_dir=...`."
        ) from error
    data = card.data.to_dict()
    absent = [key for key in ("library_name", "license") if not data.get(key)]
    if absent:
        raise PublishError(
            f"{preset_dir}/README.md's YAML lacks {absent}; re-render it with "
            "`python -m export.model_card --preset_dir=...`."
        )
    return {"metadata": metadata, "files": files, "card": card}


def get_token(token=None):
    """``token``, else ``$HF_TOKEN``, else the huggingface_hub login; else PublishError."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token as stored

    found = stored()
    if not found:
        raise PublishError(
            "No Hugging Face token: set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or run `hf auth login` first."
        )
    return found


# ------------------------------------------------------------------------------- retries


def is_transient(error):
    """Connection errors, timeouts, HTTP 408/429/5xx; not auth, not-found or validation errors."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return False
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return int(status) in TRANSIENT_STATUS
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(
        names
        & {
            "TransportError",
            "TimeoutException",
            "ConnectError",
            "ReadTimeout",
            "ConnectionError",
            "Timeout",
            "ChunkedEncodingError",
        }
    )


def with_retries(call, *, what, attempts=4, base_delay=2.0, sleep=time.sleep, log=None):
    """``call()``, retried up to ``attempts`` times on transient errors (delays base, 2 base...)."""
    for attempt in range(1, int(attempts) + 1):
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or attempt == attempts:
                if is_transient(error):
                    raise PublishError(
                        f"{what} failed {attempts} times; the last error: {error}. The Hub may be "
                        "down: try again later (the upload is one commit, nothing half-done)."
                    ) from error
                raise
            delay = base_delay * 2 ** (attempt - 1)
            if log is not None:
                log(
                    f"{what}: transient error ({type(error).__name__}: {error}); retry "
                    f"{attempt}/{attempts - 1} "
                    f"in {delay:g} s"
                )
            sleep(delay)


# ------------------------------------------------------------------------------- publishing


def plan(preset_dir, repo_id, private=False, commit_message=None):
    """Validate and describe what would be uploaded (no network)."""
    repo_id = validate_repo_id(repo_id)
    checked = validate_folder(preset_dir)
    sizes = {
        rel: os.path.getsize(os.path.join(preset_dir, *rel.split("/"))) for rel in checked["files"]
    }
    name = checked["metadata"].get("name") or os.path.basename(os.path.abspath(preset_dir))
    return {
        "repo_id": repo_id,
        "private": bool(private),
        "preset_dir": os.path.abspath(preset_dir),
        "commit_message": commit_message
        or f"Upload {name} (keras_clmr {checked['metadata'].get('keras_clmr_version')})",
        "files": sizes,
        "total_bytes": sum(sizes.values()),
        "card": str(checked["card"]),
    }


def publish(
    preset_dir,
    repo_id,
    *,
    private=False,
    commit_message=None,
    token=None,
    dry_run=False,
    attempts=4,
    base_delay=2.0,
    sleep=time.sleep,
    log=None,
):
    """Validate ``preset_dir``, create ``repo_id`` (exist_ok) and upload the folder in one commit.

    Returns the plan plus ``commit_url`` (not with ``dry_run``, which calls nothing).
    """
    result = plan(preset_dir, repo_id, private=private, commit_message=commit_message)
    if dry_run:
        result["dry_run"] = True
        return result
    api = HfApi(token=get_token(token))
    repo_id = result["repo_id"]
    repo_url = with_retries(
        lambda: api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True),
        what=f"create_repo({repo_id})",
        attempts=attempts,
        base_delay=base_delay,
        sleep=sleep,
        log=log,
    )
    info = with_retries(
        lambda: api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=result["preset_dir"],
            commit_message=result["commit_message"],
            # Exactly the validated list (plain names, no glob characters): nothing else goes.
            allow_patterns=list(result["files"]),
        ),
        what=f"upload_folder({repo_id})",
        attempts=attempts,
        base_delay=base_delay,
        sleep=sleep,
        log=log,
    )
    result.update(
        repo_url=str(repo_url),
        commit_url=getattr(info, "commit_url", None),
        commit=getattr(info, "oid", None),
    )
    return result
