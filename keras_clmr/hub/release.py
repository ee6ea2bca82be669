"""Registry names backed by official release files: download, trust on first use, convert, cache.

``build_from_release(preset, task, folder)`` downloads the preset's release file(s)
(``Preset.release_urls``) into ``<cache>/downloads`` (resumed, retried, size-capped, progress bar;
``keras_clmr.download``), checks each against what the registry knows (``Preset.assets``) and
against the sha256 kept from the first download (``<cache>/release_assets.json``: trust on first
use; a file that changed later is refused), converts it without torch (``keras_clmr.conversion``:
refused unless the float64 numpy reference of the original network agrees,
``max|keras - reference| <= 1e-4 * max(1, max|reference|)`` with equal parameter counts) and
writes a preset folder whose ``metadata.json`` records the URLs, sizes, sha256 sums and parity
figures. ``convert_files`` does the same from files downloaded by hand (``keras-clmr convert
--input FILE --preset NAME``). Offline (``KERAS_CLMR_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) nothing
is downloaded and :class:`ReleaseNotCachedError` says what to download and the one command to run.
"""

import contextlib
import hashlib
import json
import os
import sys
import time
import urllib.parse

from keras_clmr import io
from keras_clmr.hub.hf_cache import PresetNotCachedError
from keras_clmr.presets import PresetError

KNOWN_ASSETS_FILE = "release_assets.json"
DOWNLOADS_DIR = "downloads"
# Extra keyword arguments for keras_clmr.download.download (timeout, retries, max_bytes, sleep).
DOWNLOAD_OPTIONS = {}


class ReleaseError(PresetError):
    """A release file that could not be fetched, trusted or converted; ``url`` names it."""

    def __init__(self, message, url=None):
        super().__init__(message)
        self.url = url


class ReleaseNotCachedError(PresetNotCachedError, ReleaseError):
    """Offline, and the preset is not in the keras_clmr cache: says what to download and run."""


class ReleaseDownloadError(ReleaseError):
    """The download failed (HTTP error, web page, wrong size, lost connection, checksum)."""


class AssetChangedError(ReleaseError):
    """A release file whose sha256 differs from the one kept on first use or in the registry."""


class ReleaseConversionError(ReleaseError):
    """The release file is unsafe, not the expected layout, or fails the parity check."""


def cache_dir():
    """The keras_clmr cache: ``$KERAS_CLMR_CACHE`` or ``~/.cache/keras_clmr``."""
    return os.environ.get("KERAS_CLMR_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_clmr"
    )


def convert_command(preset, task, urls):
    """The one command that converts hand-downloaded release files into the cache."""
    files = [os.path.basename(urllib.parse.urlparse(url).path) or "FILE" for url in urls]
    command = f"keras-clmr convert --input {files[0]} --preset {preset.name}"
    if task == "tag":
        command = (
            f"keras-clmr convert --input {files[0]} --finetuner {files[1]} "
            f"--preset {preset.name} --task tag"
        )
    return command


def _fix(preset, task, urls):
    return (
        f"download {' and '.join(urls)} by hand (any machine, any browser) and run "
        f"`{convert_command(preset, task, urls)}`"
    )


def not_cached_error(preset, task, reason):
    """The offline error: names the cache, the URL(s) and the one command to run."""
    urls = preset.release_urls(task)
    return ReleaseNotCachedError(
        f"Preset {preset.name!r} ({task}) is not in the keras_clmr cache ({cache_dir()}) and "
        f"{reason}, so its official release file is not downloaded. To fix it: "
        f"{_fix(preset, task, urls)} in the folder holding the download(s); or unset "
        "KERAS_CLMR_OFFLINE / HF_HUB_OFFLINE to download and convert it on first use.",
        urls[0] if urls else None,
    )


# ------------------------------------------------------------------ trust on first use


def _known_path():
    return os.path.join(cache_dir(), KNOWN_ASSETS_FILE)


def known_assets():
    """``{url: {"size", "sha256", "first_seen"}}`` kept from first downloads (may be empty)."""
    path = _known_path()
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as handle:
            known = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReleaseError(
            f"{path} (the sha256 sums kept from first downloads) is unreadable ({error}); "
            "delete it only if you trust the release files you will download next."
        ) from error
    return known if isinstance(known, dict) else {}


def _record(assets):
    known = known_assets()
    for asset in assets:
        known.setdefault(
            asset["url"],
            {
                "size": asset["size"],
                "sha256": asset["sha256"],
                "first_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    os.makedirs(cache_dir(), exist_ok=True)
    io.atomic_write_json(_known_path(), known)


def expected(preset, url):
    """What the file at ``url`` must be: the registry's record, else the first download's."""
    record = dict(known_assets().get(url) or {})
    registry = dict(preset.assets.get(url) or {})
    record.update({k: v for k, v in registry.items() if v is not None})
    origin = (
        "the registry" if registry.get("sha256") else "your first download (trust on first use)"
    )
    return record.get("size"), record.get("sha256"), origin


def check_asset(preset, task, url, path, size, sha256):
    """Raise :class:`AssetChangedError` when the file differs from what is expected of ``url``."""
    want_size, want_sha, origin = expected(preset, url)
    if want_sha and sha256 != want_sha or (want_size is not None and size != want_size):
        raise AssetChangedError(
            f"{url} changed: the file has sha256 {sha256} ({size:,} bytes) but {origin} recorded "
            f"{want_sha} ({want_size if want_size is None else format(want_size, ',')} bytes). "
            "It was not converted and nothing was kept. If the authors really re-released it, "
            f"delete its entry from {_known_path()} and load again; otherwise report it.",
            url,
        )


# ------------------------------------------------------------------ download and convert


def _asset_path(url):
    name = os.path.basename(urllib.parse.urlparse(url).path) or "asset"
    digest = hashlib.sha1(url.encode()).hexdigest()[:10]
    return os.path.join(cache_dir(), DOWNLOADS_DIR, f"{digest}-{name}")


def fetch(preset, task, url, progress=True, **download_options):
    """The release file at ``url`` in the cache: downloaded once, checked; its description."""
    from keras_clmr import download

    download_options = {**DOWNLOAD_OPTIONS, **download_options}
    path = _asset_path(url)
    urls = preset.release_urls(task)
    if os.path.isfile(path):
        size, sha256 = os.path.getsize(path), io.sha256_file(path)
        try:
            check_asset(preset, task, url, path, size, sha256)
        except AssetChangedError:
            os.remove(path)  # a damaged or foreign local copy: fetch it again
        else:
            return {"url": url, "path": path, "size": size, "sha256": sha256, "downloaded": False}
    if download.is_offline():
        raise not_cached_error(
            preset, task, "offline mode is on (KERAS_CLMR_OFFLINE / HF_HUB_OFFLINE)"
        )
    want_size, want_sha, _ = expected(preset, url)
    try:
        result = download.download(
            url,
            path,
            expected_size=want_size,
            expected_sha256=want_sha,
            progress=progress,
            preset=preset.name,
            **download_options,
        )
    except download.ChecksumError as error:
        origin = expected(preset, url)[2]
        raise AssetChangedError(
            f"{url} changed: {error} The expected sha256 comes from {origin}. If the authors "
            f"really re-released the file, delete its entry from {_known_path()} (a registry "
            "checksum needs a keras_clmr update) and load again; otherwise report it.",
            url,
        ) from error
    except download.DownloadSizeError as error:
        if want_size is not None:
            raise AssetChangedError(str(error), url) from error
        raise ReleaseDownloadError(str(error), url) from error
    except download.DownloadError as error:
        raise ReleaseDownloadError(
            f"{error} (to fix it by hand: {_fix(preset, task, urls)})", url
        ) from error
    return {**result, "downloaded": True}


def _say(progress, message):
    if progress:
        print(f"keras_clmr: {message}", file=sys.stderr, flush=True)


def convert_files(preset, task, assets, folder, progress=True):
    """Convert release files (``[{"url", "path", "size", "sha256"}]``: encoder, then head) into
    a preset folder at ``folder`` (must not exist); records their sha256 on success."""
    from keras_clmr.conversion import ConversionError, convert_checkpoint
    from keras_clmr.conversion.report import save_converted

    for asset in assets:
        check_asset(preset, task, asset["url"], asset["path"], asset["size"], asset["sha256"])
    names = ", ".join(os.path.basename(a["url"]) for a in assets)
    _say(progress, f"converting {names} to Keras and checking it against the original network")
    started = time.perf_counter()
    try:
        model, metadata = convert_checkpoint(
            assets[0]["path"], finetuner=assets[1]["path"] if len(assets) > 1 else None
        )
    except ConversionError as error:
        raise ReleaseConversionError(
            f"The release file {assets[0]['url']}"
            + (f" (with {assets[1]['url']})" if len(assets) > 1 else "")
            + f" could not be converted for preset {preset.name!r}: {error} Nothing was cached. "
            "If the file was damaged in transit, load again to download it afresh; if it "
            "persists, report it with this message.",
            assets[0]["url"],
        ) from error
    seconds = time.perf_counter() - started
    described = [{k: a[k] for k in ("url", "size", "sha256")} for a in assets]
    metadata["converted_from"].update(url=assets[0]["url"], size=assets[0]["size"])
    if len(assets) > 1:
        metadata["finetuner"]["converted_from"].update(url=assets[1]["url"], size=assets[1]["size"])
    metadata["release"] = {
        "assets": described,
        "how": "downloaded from the official release and converted locally by keras_clmr "
        "(trust on first use: the first download's sha256 is kept in "
        f"{KNOWN_ASSETS_FILE})",
        "conversion_seconds": round(seconds, 2),
    }
    save_converted(
        model,
        metadata,
        folder,
        name=preset.name,
        description=preset.description,
        license_id=preset.license,
        source_url=assets[0]["url"],
    )
    _record(described)
    parity = metadata.get("finetuner", {}).get("parity") or metadata.get("parity") or {}
    worst = max((parity.get("relative_diff") or {"-": float("nan")}).values())
    _say(
        progress,
        f"{preset.name} ({task}) converted in {seconds:.1f} s; parity: max relative "
        f"difference {worst:.2e} (bound {parity.get('tolerance')})",
    )
    return folder


def build_from_release(preset, task, folder, progress=True, **download_options):
    """Download (or reuse) the release file(s) of ``preset``/``task`` and convert them into
    ``folder``. A file that fails to convert is deleted, so the next call downloads afresh."""
    urls = preset.release_urls(task)
    if not urls:
        raise PresetError(f"Preset {preset.name!r} has no release file for {task!r}.")
    assets = [fetch(preset, task, url, progress=progress, **download_options) for url in urls]
    try:
        return convert_files(preset, task, assets, folder, progress=progress)
    except (ReleaseConversionError, AssetChangedError):
        for asset in assets:
            with contextlib.suppress(FileNotFoundError):
                os.remove(asset["path"])
        raise


def describe_local_files(preset, task, paths):
    """``convert_files`` input for files downloaded by hand (matched to the release URLs)."""
    urls = preset.release_urls(task)
    if len(paths) != len(urls):
        raise PresetError(
            f"Preset {preset.name!r} ({task}) is made of {len(urls)} release file(s) "
            f"({', '.join(urls)}); got {len(paths)}: `{convert_command(preset, task, urls)}`."
        )
    assets = []
    for url, path in zip(urls, paths):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise PresetError(f"{path}: no such file (the download of {url}).")
        assets.append(
            {
                "url": url,
                "path": path,
                "size": os.path.getsize(path),
                "sha256": io.sha256_file(path),
            }
        )
    return assets


__all__ = [
    "AssetChangedError",
    "ReleaseConversionError",
    "ReleaseDownloadError",
    "ReleaseError",
    "ReleaseNotCachedError",
    "build_from_release",
    "cache_dir",
    "convert_command",
    "convert_files",
    "describe_local_files",
    "fetch",
    "known_assets",
    "not_cached_error",
]
