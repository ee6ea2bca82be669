"""The Node.js example (export/examples/onnxruntime-node) gives the numbers of Python
onnxruntime and Keras.

Needs `node` and the onnxruntime-node package: taken from the example's node_modules when
present (`npm ci --ignore-scripts` there, as the Makefile does), else installed once with npm
into ~/.cache/keras_clmr/node (or $KERAS_CLMR_NODE_MODULES). Skipped when node is absent or
npm cannot install the package, except under CI=true, where that is a failure: CI installs the
example through the Makefile, so a missing node_modules is a broken set-up, not a reason to skip.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from conftest import BACKEND, tiny_sample_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "export", "examples", "onnxruntime-node")

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = [
    pytest.mark.large,  # a Node.js process and a full ONNX export
    pytest.mark.skipif(
        BACKEND != "tensorflow", reason="the ONNX export runs on the TensorFlow backend"
    ),
]


def _unavailable(reason):
    """Skip locally; fail on CI, where the Makefile must have installed the example."""
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: the Makefile's npm ci step must provide it)")
    pytest.skip(reason)


def _node_modules():
    if shutil.which("node") is None:
        _unavailable("node is not installed")
    local = os.path.join(EXAMPLE, "node_modules")
    if os.path.isdir(os.path.join(local, "onnxruntime-node")):
        return local
    if ON_CI:
        _unavailable(f"onnxruntime-node is not in {local}")
    return _cached_node_modules()


def _cached_node_modules():
    with open(os.path.join(EXAMPLE, "package-lock.json"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    root = os.environ.get("KERAS_CLMR_NODE_MODULES") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_clmr", "node", digest
    )
    modules = os.path.join(root, "node_modules")
    if os.path.isdir(os.path.join(modules, "onnxruntime-node")):
        return modules
    if shutil.which("npm") is None:
        _unavailable(
            "npm is not installed and onnxruntime-node is not in the example's node_modules"
        )
    os.makedirs(os.path.dirname(root), exist_ok=True)
    work = tempfile.mkdtemp(dir=os.path.dirname(root), prefix=".install-")
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(os.path.join(EXAMPLE, name), work)
        done = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            _unavailable(f"npm could not install onnxruntime-node: {done.stderr[-500:]}")
        try:
            os.replace(work, root)
        except OSError:
            if not os.path.isdir(modules):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return modules


def _run_node(modules, *args):
    env = dict(os.environ, NODE_PATH=modules)
    return subprocess.run(
        ["node", os.path.join(EXAMPLE, "index.js"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tagger_export(tmp_path_factory):
    from keras_clmr import export, hub
    from keras_clmr.export import card as model_card
    from keras_clmr.models import MusicTagger

    tagger = MusicTagger(tiny_sample_cnn(), 4, tags=["rock", "piano", "quiet", "drums"])
    tagger.build((None, tagger.input_samples))
    folder = tmp_path_factory.mktemp("node") / "preset"
    hub.save_preset(tagger, folder, name="tiny-tagger")
    export.export_preset(str(folder), None, "onnx")
    model_card.write_card(folder)
    return tagger, folder


def test_node_matches_python(tagger_export, tmp_path):
    import soundfile

    from keras_clmr import export
    from keras_clmr.inference import tag

    modules = _node_modules()
    tagger, folder = tagger_export
    n = tagger.input_samples
    rng = np.random.default_rng(3)
    samples = int(3.5 * n)
    audio = 0.5 * np.sin(2 * np.pi * 440 * np.arange(samples) / 22050) + rng.normal(0, 0.1, samples)
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, np.clip(audio, -1, 1).astype("float32"), 22050, subtype="PCM_16")
    done = _run_node(modules, "--model", folder / "model.onnx", "--batch", 2, "--top", 3, wav)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # Python: the same file, the same windows, onnxruntime.
    decoded, rate = soundfile.read(wav, dtype="float32")
    windows = decoded[: 3 * n].reshape(3, n)
    expected = export.run_onnx(export.onnx_session(folder / "model.onnx"), windows)
    assert report["windows"] == 3 and report["times"] == [0.0, n / 22050, 2 * n / 22050]
    np.testing.assert_allclose(
        np.array(report["embeddings"]), expected["embedding"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.array(report["tag_probabilities"]), expected["tags"], rtol=1e-5, atol=1e-6
    )
    # And keras_clmr's own tag() (Keras engine) on the file: same clip-level tags.
    keras_result = tag(str(wav), model=tagger, engine="keras", top_k=3)
    np.testing.assert_allclose(report["clip_tags"], keras_result.clip, atol=1e-4)
    assert [t["tag"] for t in report["top_tags"]] == [name for name, _ in keras_result.top]


def test_node_refuses_a_wrong_sample_rate(tagger_export, tmp_path):
    import soundfile

    modules = _node_modules()
    _, folder = tagger_export
    wav = tmp_path / "16k.wav"
    soundfile.write(wav, np.zeros(20000, "float32"), 16000, subtype="PCM_16")
    done = _run_node(modules, "--model", folder / "model.onnx", wav)
    assert done.returncode == 1 and "expects 22050 Hz" in done.stderr and "ffmpeg" in done.stderr
