"""Preset folders on disk, in the Hugging Face cache and in memory.

- ``folder``: save / read metadata / verify / load a preset folder;
- ``safety``: the config allow-list (only keras_clmr's classes and inert core Keras);
- ``resolution``: registry name, ``hf://org/name[@revision]`` handle or local folder -> folder;
- ``hf_cache``: snapshots through ``huggingface_hub`` and populating a cache by hand;
- ``release``: official release files behind registry names (download, trust on first use,
  torch-free conversion with parity, into the keras_clmr cache).
"""

from keras_clmr.hub.folder import (
    CONFIG_FILE,
    FORMAT_VERSION,
    METADATA_FILE,
    README_FILE,
    REQUIRED_FILES,
    WEIGHTS_FILE,
    PresetIntegrityError,
    PresetMissingFileError,
    hash_files,
    hash_folder,
    load_preset,
    model_attribute,
    read_metadata,
    save_preset,
    verify_preset,
)
from keras_clmr.hub.hf_cache import (
    PresetNotCachedError,
    hf_cache_dir,
    parse_hf_handle,
    populate_local_cache,
    snapshot,
)
from keras_clmr.hub.release import (
    AssetChangedError,
    ReleaseConversionError,
    ReleaseDownloadError,
    ReleaseError,
    ReleaseNotCachedError,
)
from keras_clmr.hub.resolution import (
    cached_preset_path,
    convert_into_cache,
    keras_clmr_cache_dir,
    load_pretrained,
    resolve,
)
from keras_clmr.hub.safety import UnsafePresetError, check_config_safe
from keras_clmr.io import sha256_file
from keras_clmr.models import is_tagger
from keras_clmr.presets import TASKS, PresetError, UnknownPresetError, get_preset

__all__ = [
    "AssetChangedError",
    "ReleaseConversionError",
    "ReleaseDownloadError",
    "ReleaseError",
    "ReleaseNotCachedError",
    "cached_preset_path",
    "convert_into_cache",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "README_FILE",
    "REQUIRED_FILES",
    "TASKS",
    "WEIGHTS_FILE",
    "PresetError",
    "PresetIntegrityError",
    "PresetMissingFileError",
    "PresetNotCachedError",
    "UnknownPresetError",
    "UnsafePresetError",
    "check_config_safe",
    "get_preset",
    "hash_files",
    "hash_folder",
    "hf_cache_dir",
    "is_tagger",
    "keras_clmr_cache_dir",
    "load_preset",
    "load_pretrained",
    "model_attribute",
    "parse_hf_handle",
    "populate_local_cache",
    "read_metadata",
    "resolve",
    "save_preset",
    "sha256_file",
    "snapshot",
    "verify_preset",
]
