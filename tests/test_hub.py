"""Preset folders, the registry, hf:// handles through a hand-built HF cache, safe mode."""

import hashlib
import json
import os
import shutil

import keras
import numpy as np
import pytest

from keras_clmr import hub, presets
from keras_clmr.models import CLMR
from keras_clmr.models.tagger import MusicTagger

from conftest import tiny_sample_cnn

TAGS = ["guitar", "piano", "drums"]


def _audio(model, batch=2, seed=0):
    return (
        np.random.default_rng(seed).uniform(-1, 1, (batch, model.input_samples)).astype("float32")
    )


def _tagger():
    return MusicTagger(tiny_sample_cnn(sample_rate=8000), num_classes=len(TAGS), tags=TAGS)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def saved(tmp_path):
    model = tiny_sample_cnn(sample_rate=8000)
    x = _audio(model)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    folder = hub.save_preset(
        model,
        tmp_path / "tiny",
        name="tiny",
        source_checkpoint="https://example.org/ckpt.pt",
        evaluation={"demo": {"roc_auc": 0.5}},
    )
    return folder, x, expected


@pytest.mark.multibackend
def test_round_trip_identical_outputs_and_metadata(saved):
    folder, x, expected = saved
    assert sorted(os.listdir(folder)) == [
        "README.md",
        "config.json",
        "metadata.json",
        "model.weights.h5",
    ]
    loaded = hub.load_preset(folder)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)), expected)
    meta = json.load(open(os.path.join(folder, "metadata.json")))
    assert meta["input_samples"] == 7776 and meta["sample_rate"] == 8000
    assert meta["parameter_count"] == loaded.count_params()
    assert meta["keras_version"] == keras.__version__ and meta["task"] == "embed"
    assert meta["source_checkpoint"]["url"] == "https://example.org/ckpt.pt"
    assert meta["evaluation"] == {"demo": {"roc_auc": 0.5}}
    assert set(meta["files"]) == {"README.md", "config.json", "model.weights.h5"}
    for name, entry in meta["files"].items():  # hashes checked with an independent hashlib read
        assert entry["sha256"] == _sha(os.path.join(folder, name))
    assert "library_name: keras" in open(os.path.join(folder, "README.md")).read()


@pytest.mark.multibackend
def test_tagger_round_trip_and_task_selection(tmp_path):
    tagger = _tagger()
    x = _audio(tagger)
    expected = keras.ops.convert_to_numpy(tagger(x))
    folder = hub.save_preset(tagger, tmp_path / "tagger")
    meta = hub.read_metadata(folder)
    assert (
        meta["task"] == "tag"
        and meta["tags"] == TAGS
        and meta["output_names"] == ["tag_probabilities"]
    )
    loaded = hub.load_pretrained(str(folder))
    assert isinstance(loaded, MusicTagger) and loaded.tags == TAGS
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), expected)
    encoder = hub.load_pretrained(str(folder), task="embed")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(encoder(x, training=False)),
        keras.ops.convert_to_numpy(tagger.backbone(x, training=False)),
    )
    with pytest.raises(presets.PresetError, match="task='embed'"):
        hub.load_preset(hub.save_preset(tiny_sample_cnn(), tmp_path / "enc"), task="tag")


def test_pretrainer_stores_its_encoder(tmp_path):
    clmr = CLMR(encoder=tiny_sample_cnn(), projection_dim=4)
    clmr.build((None, 2 * clmr.input_samples))
    folder = hub.save_preset(clmr, tmp_path / "clmr")
    meta = hub.read_metadata(folder)
    assert meta["class_name"] == "SampleCNN" and meta["stored_from"] == "CLMR.encoder"
    assert meta["parameter_count"] == clmr.encoder.count_params()


def _hand_built_cache(cache, repo_id, folder, commit, ref="main"):
    """The huggingface_hub cache layout, written here without keras_clmr's helper."""
    storage = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(storage, "blobs"), exist_ok=True)
    snap = os.path.join(storage, "snapshots", commit)
    os.makedirs(snap)
    for name in os.listdir(folder):
        digest = _sha(os.path.join(folder, name))
        shutil.copyfile(os.path.join(folder, name), os.path.join(storage, "blobs", digest))
        os.symlink(os.path.join("..", "..", "blobs", digest), os.path.join(snap, name))
    if ref:
        os.makedirs(os.path.join(storage, "refs"), exist_ok=True)
        with open(os.path.join(storage, "refs", ref), "w") as f:
            f.write(commit)
    return snap


def test_hf_handle_from_hand_built_cache_offline_with_revisions(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, x, expected = saved
    cache = str(tmp_path / "hf")
    rev_a, rev_b = "a" * 40, "b" * 40
    other = hub.save_preset(
        tiny_sample_cnn(sample_rate=8000), tmp_path / "other"
    )  # different weights
    _hand_built_cache(cache, "test-org/tiny", other, rev_a, ref=None)
    _hand_built_cache(cache, "test-org/tiny", folder, rev_b)  # refs/main -> rev_b
    main = hub.load_pretrained("hf://test-org/tiny", cache_dir=cache)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(main(x, training=False)), expected)
    pinned = hub.load_pretrained(f"hf://test-org/tiny@{rev_a}", cache_dir=cache)
    assert not np.allclose(keras.ops.convert_to_numpy(pinned(x, training=False)), expected)
    same = hub.load_pretrained("hf://test-org/tiny", revision=rev_a, cache_dir=cache)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(same(x, training=False)),
        keras.ops.convert_to_numpy(pinned(x, training=False)),
    )


def test_registry_name_through_populated_cache(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, x, expected = saved
    cache = str(tmp_path / "hf")
    snap = hub.populate_local_cache(folder, "test-org/tiny-reg", cache_dir=cache)
    assert os.path.islink(os.path.join(snap, "model.weights.h5"))
    assert open(
        os.path.join(cache, "models--test-org--tiny-reg", "refs", "main")
    ).read() == os.path.basename(snap)
    monkeypatch.setitem(
        presets._REGISTRY,
        "tiny-reg",
        presets.Preset(
            name="tiny-reg",
            description="test",
            architecture="SampleCNN",
            handles={"embed": "hf://test-org/tiny-reg"},
            sample_rate=8000,
            input_samples=7776,
        ),
    )
    model = hub.load_pretrained("tiny-reg", cache_dir=cache)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=False)), expected)


def test_offline_empty_cache_says_how_to_populate(tmp_path, monkeypatch):
    # Release-backed presets: the URL to fetch by hand and the one command (tests/
    # test_release_chain.py covers the rest); the unpinned Hub handle is never asked.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KERAS_CLMR_CACHE", str(tmp_path / "keras_clmr"))
    with pytest.raises(hub.PresetNotCachedError) as error:
        hub.load_pretrained("clmr-mtat", cache_dir=str(tmp_path / "empty"))
    message = str(error.value)
    assert "clmr_checkpoint_10000.zip" in message and "keras-clmr convert --input" in message
    assert not os.path.exists(tmp_path / "empty" / "models--keras-clmr--clmr-mtat")


def test_unknown_name_suggests_closest():
    with pytest.raises(presets.UnknownPresetError, match="Did you mean 'clmr-mtat'"):
        hub.load_pretrained("clmr-mtta")
    with pytest.raises(presets.PresetError, match="no such preset folder"):
        hub.load_pretrained("./does/not/exist")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_metadata"])
def test_tampered_truncated_or_missing_files_are_refused(saved, damage):
    folder, _, _ = saved
    weights = os.path.join(folder, "model.weights.h5")
    if damage == "flip":
        data = bytearray(open(weights, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(weights, "wb").write(bytes(data))
        error, match = hub.PresetIntegrityError, "modified"
    elif damage == "truncate":
        data = open(weights, "rb").read()
        open(weights, "wb").write(data[:-100])
        error, match = hub.PresetIntegrityError, "truncated"
    elif damage == "delete":
        os.remove(weights)
        error, match = hub.PresetMissingFileError, "missing model.weights.h5"
    else:
        os.remove(os.path.join(folder, "metadata.json"))
        error, match = hub.PresetMissingFileError, "metadata.json is missing"
    with pytest.raises(error, match=match):
        hub.load_pretrained(folder)


def _rewrite_config(folder, config):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    meta = hub.read_metadata(folder)
    meta["files"]["config.json"] = {
        "sha256": _sha(os.path.join(folder, "config.json")),
        "size": os.path.getsize(os.path.join(folder, "config.json")),
    }
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump(meta, f)


@keras.saving.register_keras_serializable(package="foreign")
class ForeignLayer(keras.layers.Layer):
    def call(self, x):
        return x


def test_configs_naming_code_or_foreign_classes_are_refused(saved, tmp_path, monkeypatch):
    folder, _, _ = saved
    marker = tmp_path / "ran"
    monkeypatch.setenv("KERAS_CLMR_TEST_MARKER", str(marker))
    lam = keras.Sequential(
        [
            keras.layers.Lambda(
                lambda x: (open(__import__("os").environ["KERAS_CLMR_TEST_MARKER"], "w"), x)[1]
            )
        ]
    )
    lam.build((None, 4))  # building runs the lambda once; only loading is under test
    _rewrite_config(folder, keras.saving.serialize_keras_object(lam))
    marker.unlink()
    with pytest.raises(hub.UnsafePresetError, match="Lambda"):
        hub.load_pretrained(folder)
    assert not marker.exists()

    foreign = keras.Sequential([ForeignLayer()])
    foreign.build((None, 4))
    _rewrite_config(folder, keras.saving.serialize_keras_object(foreign))
    with pytest.raises(hub.UnsafePresetError, match="foreign>ForeignLayer|outside keras_clmr"):
        hub.load_pretrained(folder)

    config = json.load(open(os.path.join(tmp_path, "tiny", "config.json")))
    _rewrite_config(
        folder,
        {
            "module": "os",
            "class_name": "system",
            "config": {"command": "touch x"},
            "registered_name": None,
        },
    )
    with pytest.raises(hub.UnsafePresetError, match="os.system"):
        hub.load_pretrained(folder)
    # A keras_clmr module name pointing at a class registered elsewhere is refused too.
    bad = dict(
        json.loads(json.dumps(config)),
        module="keras_clmr.models.sample_cnn",
        registered_name="foreign>ForeignLayer",
    )
    _rewrite_config(folder, bad)
    with pytest.raises(hub.UnsafePresetError):
        hub.load_pretrained(folder)


def test_save_is_atomic_and_refuses_to_overwrite(saved, tmp_path):
    folder, _, _ = saved
    model = tiny_sample_cnn()
    with pytest.raises(FileExistsError):
        hub.save_preset(model, folder)
    with pytest.raises(FileNotFoundError):
        hub.save_preset(
            model, tmp_path / "broken", extra_files={"export.onnx": str(tmp_path / "missing.onnx")}
        )
    assert not os.path.exists(tmp_path / "broken")
    assert not [
        n for n in os.listdir(tmp_path) if n.startswith(".")
    ]  # no half-written temp folder left
    hub.save_preset(model, folder, overwrite=True)
    hub.verify_preset(folder)


def test_local_builder_hook_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KERAS_CLMR_CACHE", str(tmp_path / "kc"))
    calls = []

    def builder(preset_dir, task):
        calls.append(task)
        hub.save_preset(tiny_sample_cnn(sample_rate=8000), preset_dir)

    # With an unreachable Hub handle: falls back to the builder; then reuses what it built.
    monkeypatch.setitem(
        presets._REGISTRY,
        "built-tiny",
        presets.Preset(
            name="built-tiny",
            description="test",
            architecture="SampleCNN",
            handles={"embed": "hf://test-org/never-published"},
            sample_rate=8000,
            input_samples=7776,
        ),
    )
    presets.register_local_builder("built-tiny", builder)
    first = hub.load_pretrained("built-tiny", cache_dir=str(tmp_path / "hf"))
    second = hub.load_pretrained("built-tiny", cache_dir=str(tmp_path / "hf"))
    assert calls == ["embed"]
    x = _audio(first)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(first(x, training=False)),
        keras.ops.convert_to_numpy(second(x, training=False)),
    )
    assert os.path.isfile(tmp_path / "kc" / "presets" / "built-tiny-embed" / "metadata.json")

    def failing(preset_dir, task):
        os.makedirs(preset_dir)
        open(os.path.join(preset_dir, "config.json"), "w").write("{")
        raise RuntimeError("conversion failed")

    monkeypatch.setitem(
        presets._REGISTRY,
        "broken-tiny",
        presets.Preset(
            name="broken-tiny",
            description="test",
            architecture="SampleCNN",
            handles={},
            sample_rate=8000,
            input_samples=7776,
            params={"embed": None},
            local_builder=failing,
        ),
    )
    with pytest.raises(presets.PresetError, match="conversion failed"):
        hub.load_pretrained("broken-tiny")
    assert not os.path.exists(tmp_path / "kc" / "presets" / "broken-tiny-embed")


def test_list_presets_prints_the_registry(capsys):
    names = presets.list_presets()
    out = capsys.readouterr().out
    assert {"clmr-mtat", "clmr-mtat-1550", "pemr-mtat"} <= set(names)
    assert "88.7" in out and "official release (converted on first use)" in out
    assert presets.get_preset("clmr-mtat").tasks == ("embed", "tag")
    assert presets.get_preset("pemr-mtat").tasks == ("embed",)


def test_demo_preset_round_trip_and_tags(tmp_path, monkeypatch):
    import soundfile as sf

    from training.demo import preset_round_trip

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the cache load is offline by argument
    tagger = _tagger()
    wav = str(tmp_path / "demo.wav")
    sf.write(
        wav,
        np.random.default_rng(1)
        .uniform(-0.5, 0.5, 3 * tagger.input_samples + 10)
        .astype("float32"),
        8000,
    )
    summary = preset_round_trip(tagger, tmp_path / "demo", wav, repo_id="test-org/demo")
    assert summary["round_trip_max_abs_diff"] == 0.0 and summary["windows"] == 3
    assert [name for name, _ in summary["top_tags"]] and set(dict(summary["top_tags"])) <= set(TAGS)
    assert os.path.isdir(tmp_path / "demo" / "hf_cache" / "models--test-org--demo" / "snapshots")
    assert os.environ.get("HF_HUB_OFFLINE") is None
    json.dumps(summary)


def _variables_by_path(model):
    """Stored variables by path (seed-generator states are not stored, and numbered globally)."""
    return {
        v.path: keras.ops.convert_to_numpy(v)
        for v in model.variables
        if "seed_generator" not in v.path
    }


@pytest.mark.parametrize("kind", ["sample_cnn", "tagger", "fcn", "cpc_encoder"])
def test_fast_load_equals_the_plain_keras_path(tmp_path, monkeypatch, kind):
    """Variables created straight from the weights file (no random init, no assign) hold
    exactly what Keras' own build + load_weights gives, for every kind of preset model."""
    from keras_clmr.hub import folder as preset_folder
    from keras_clmr.models import FCN
    from keras_clmr.models.cpc import CPCEncoder

    keras.utils.set_random_seed(3)
    model = {
        "sample_cnn": lambda: tiny_sample_cnn(sample_rate=8000),
        "tagger": _tagger,
        "fcn": lambda: FCN(channels=(4, 8, 8, 8)),
        "cpc_encoder": lambda: CPCEncoder(
            strides=(4, 2),
            filter_sizes=(8, 4),
            paddings=(2, 1),
            latent_dim=16,
            context_dim=8,
            input_samples=512,
        ),
    }[kind]()
    x = _audio(model)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    folder = hub.save_preset(model, tmp_path / kind)

    built = []
    fast_builder = preset_folder._build_with_stored_weights
    monkeypatch.setattr(
        preset_folder,
        "_build_with_stored_weights",
        lambda *args: built.append(fast_builder(*args)) or built[-1],
    )
    fast = hub.load_preset(folder)
    assert built and built[-1] is fast  # the fast path ran and was kept
    monkeypatch.setattr(preset_folder, "_build_with_stored_weights", lambda *args: None)
    plain = hub.load_preset(folder)

    fast_vars, plain_vars = _variables_by_path(fast), _variables_by_path(plain)
    assert sorted(fast_vars) == sorted(plain_vars) == sorted(_variables_by_path(model))
    for path, value in plain_vars.items():
        np.testing.assert_array_equal(fast_vars[path], value, err_msg=path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fast(x, training=False)), expected)
    # Nothing is left deferred for Keras to initialise later.
    from keras.src.backend.common import global_state

    assert not global_state.get_global_attribute("uninitialized_variables", [])


def test_fast_load_of_a_mismatched_weights_file_keeps_the_clear_error(saved, tmp_path):
    folder, _, _ = saved
    other = hub.save_preset(tiny_sample_cnn(sample_rate=8000, channels=(4,) * 11), tmp_path / "o")
    shutil.copyfile(os.path.join(other, hub.WEIGHTS_FILE), os.path.join(folder, hub.WEIGHTS_FILE))
    with pytest.raises(hub.PresetIntegrityError, match="does not fit config.json"):
        hub.load_preset(folder, verify=False)
    from keras.src.backend.common import global_state

    assert not global_state.get_global_attribute("uninitialized_variables", [])
