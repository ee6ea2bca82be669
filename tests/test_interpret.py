"""keras_clmr.interpret: filter spectra, listening page (headless Chromium), taggram, 2-D map."""

import numpy as np
import pytest

from keras_clmr.interpret import filters as filters_lib

from conftest import tiny_sample_cnn

SAMPLE_RATE = 22050


def _set_stem(model, kernels, bias=None):
    """Set SampleCNN's first convolution to ``kernels`` [3, filters] (BatchNorm stays identity)."""
    conv = model.get_layer("block_0_conv") if hasattr(model, "get_layer") else None
    conv = next(layer for layer in model.stack if layer.name == "block_0_conv")
    filters = conv.kernel.shape[-1]
    assert kernels.shape == (3, filters)
    conv.kernel.assign(kernels[:, None, :].astype(np.float32))
    conv.bias.assign(np.zeros(filters, np.float32) if bias is None else bias.astype(np.float32))


def _tiled_spectrum(kernel, samples=729):
    """float64 reference: the maximiser of mean_t <w, x[3t:3t+3]> on a ball is x ~ tile(w)."""
    return np.abs(np.fft.rfft(np.tile(np.asarray(kernel, np.float64), samples // 3)))


@pytest.mark.multibackend
def test_layer1_peaks_at_the_frequencies_of_known_kernels():
    # The stem sees non-overlapping 3-sample frames, so a mean-activation maximiser is periodic
    # with period 3: it can only show 0 Hz and sr/3. Sinusoid kernels at those frequencies (any
    # phase and sign) must come back as peaks there; the order must sort them.
    model = tiny_sample_cnn()
    n = np.arange(3)
    chosen = np.array(
        [SAMPLE_RATE / 3, 0.0, SAMPLE_RATE / 3, 0.0, SAMPLE_RATE / 3, 0.0, SAMPLE_RATE / 3, 0.0]
    )
    phases = np.array([0.0, 0.0, 0.7, 0.0, 2.0, np.pi, -1.1, 0.0])
    scales = np.array([1.0, 0.5, 0.8, -0.7, 1.2, 0.3, 0.4, 1.0])
    kernels = np.stack(
        [
            s * np.cos(2 * np.pi * f * n / SAMPLE_RATE + p)
            for f, p, s in zip(chosen, phases, scales)
        ],
        axis=1,
    )
    _set_stem(model, kernels)
    result = filters_lib.filter_spectra(model, layers=(1,), steps=150, seed=3)
    entry = result[1]
    bin_width = SAMPLE_RATE / 729
    assert result.frequencies[1] == pytest.approx(bin_width)
    np.testing.assert_allclose(entry.peak_frequencies, chosen, atol=bin_width)
    assert np.all(np.diff(entry.peak_frequencies[entry.order]) >= 0)
    assert set(entry.order[:4]) == {1, 3, 5, 7}
    for j in range(kernels.shape[1]):
        reference = _tiled_spectrum(kernels[:, j])
        got = entry.spectra[j]
        np.testing.assert_allclose(got / got.max(), reference / reference.max(), atol=1e-3)


def test_hertz_axis_follows_the_model_sample_rate():
    model = tiny_sample_cnn(sample_rate=16000)
    _set_stem(model, np.stack([np.cos(2 * np.pi * np.arange(3) / 3)] * 8, axis=1))
    result = filters_lib.filter_spectra(model, layers=1, steps=60)
    np.testing.assert_allclose(result[1].peak_frequencies, 16000 / 3, atol=16000 / 729)


def test_deeper_layers_picture_and_determinism(tmp_path):
    model = tiny_sample_cnn()
    path = tmp_path / "spectra.png"
    first = filters_lib.filter_spectra(model, layers=(1, 4, 6), steps=20, seed=5, output=str(path))
    again = filters_lib.filter_spectra(
        model, layers=("block_0", "block_3", "block_5"), steps=20, seed=5
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and first.path == str(path)
    assert [e.layer for e in first.layers] == [1, 4, 6]
    assert [e.name for e in again.layers] == ["block_0", "block_3", "block_5"]
    for a, b in zip(first.layers, again.layers):
        assert a.spectra.shape == (8, 365)
        np.testing.assert_allclose(a.spectra, b.spectra, rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_taggers_are_unwrapped_to_their_encoder():
    from keras_clmr.models import MusicTagger

    encoder = tiny_sample_cnn()
    tagger = MusicTagger(encoder, num_classes=3)
    direct = filters_lib.filter_spectra(encoder, layers=(2,), steps=5, seed=4)
    wrapped = filters_lib.filter_spectra(tagger, layers=(2,), steps=5, seed=4)
    np.testing.assert_allclose(wrapped[2].spectra, direct[2].spectra, rtol=1e-5, atol=1e-7)


def test_ascent_increases_each_filters_activation():
    model = tiny_sample_cnn()
    start = filters_lib.filter_spectra(model, layers=(4,), steps=0, seed=1)[4].activations
    end = filters_lib.filter_spectra(model, layers=(4,), steps=40, seed=1)[4].activations
    assert np.all(end > start)


def test_bad_layers_and_models_raise_clear_errors():
    import keras

    model = tiny_sample_cnn()
    with pytest.raises(
        filters_lib.FilterLayerError, match="no filter layer 12.*choose from layers 1 \\(block_0\\)"
    ):
        filters_lib.filter_spectra(model, layers=(12,), steps=1)
    with pytest.raises(filters_lib.FilterLayerError, match="block_99"):
        filters_lib.filter_spectra(model, layers=("block_99",), steps=1)
    with pytest.raises(filters_lib.FilterLayerError, match="too short|no frames"):
        filters_lib.filter_spectra(model, layers=(11,), steps=1, input_samples=9)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
    with pytest.raises(filters_lib.UnsupportedModelError, match="SampleCNN.*FCN"):
        filters_lib.filter_spectra(dense, steps=1)


def test_fcn_input_spectrum_method():
    from keras_clmr.models import FCN

    model = FCN(
        channels=(4, 4),
        pools=((2, 2), (2, 2)),
        input_samples=4096,
        n_mels=16,
        n_fft=64,
        hop_length=32,
    )
    result = filters_lib.filter_spectra(model, steps=10)  # default layers: every FCN block
    assert [e.layer for e in result.layers] == [1, 2]
    # Default length: max(2 frames at layer 2 = 2 * 2 * 32, 4 * n_fft = 256) samples -> 129 bins.
    assert [e.spectra.shape for e in result.layers] == [(4, 129), (4, 129)]
    assert [e.waveforms.shape for e in result.layers] == [(4, 256), (4, 256)]
    assert all(np.all(np.isfinite(e.spectra)) for e in result.layers)


# ----------------------------------------------------------------------------- listening page

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

from keras_clmr.interpret import listening as listening_lib  # noqa: E402

WINDOW = 4410  # 0.2 s at 22050 Hz


def _level_encoder():
    """An encoder with known features: 0 = window power, 1 = minus the power, 2 = the mean."""
    import keras
    from keras import ops

    class LevelFeatures(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.input_samples, self.sample_rate, self.embedding_dim = WINDOW, SAMPLE_RATE, 3

        def call(self, audio):
            power = ops.mean(ops.square(audio), axis=-1, keepdims=True)
            return ops.concatenate(
                [power, -power, ops.mean(audio, axis=-1, keepdims=True)], axis=-1
            )

    return LevelFeatures(name="levels")


def _write_level_corpus(root):
    """Two collections of 1 s sines; file i has level a_i, rising within it (best window last)."""
    import soundfile

    rng = np.random.default_rng(0)
    levels = {"indomain": [0.1, 0.5, 0.3, 0.7, 0.2], "outdomain": [0.6, 0.05, 0.4]}
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for collection, amplitudes in levels.items():
        os.makedirs(root / collection)
        for i, amplitude in enumerate(amplitudes):
            ramp = np.repeat(np.linspace(0.6, 1.0, 5), WINDOW)[:SAMPLE_RATE]
            ramp = np.pad(ramp, (0, SAMPLE_RATE - len(ramp)), mode="edge")
            audio = amplitude * ramp * np.sin(2 * np.pi * 440 * t + rng.uniform(0, 6))
            soundfile.write(
                root / collection / f"{collection}_{i}.wav", audio, SAMPLE_RATE, subtype="FLOAT"
            )
    with open(root / "indomain" / "labels.csv", "w") as file:
        file.write("path,labels,split\nindomain_1.wav,loud;sine,train\n")
    return levels


def _reference_ranking(root, feature, collection, top_k):
    """float64 numpy reference: best window per file, files sorted by that value (descending)."""
    import soundfile

    entries = []
    for path in sorted(root.rglob("*.wav")):
        if collection != "all" and path.parent.name != collection:
            continue
        audio, _ = soundfile.read(path, dtype="float64")
        windows = audio[: len(audio) // WINDOW * WINDOW].reshape(-1, WINDOW)
        values = np.mean(windows**2, axis=1) * (1 if feature == 0 else -1)
        best = int(np.argmax(values))
        entries.append((-values[best], path.name, best * WINDOW / SAMPLE_RATE))
    return [(name, start) for _, name, start in sorted(entries)[:top_k]]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is required in CI for the browser tests: apt-get install -y chromium")
    pytest.skip(
        "Chromium is not installed (apt-get install -y chromium); the pages need a real browser"
    )


_PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
const __consoleError = console.error;
console.error = function () {
  window.__errors.push([...arguments].join(" "));
  __consoleError.apply(console, arguments);
};
</script>"""

# Runs after the page's own script: reads the rows, uses the two pickers like a user, loads
# every audio element of the final view and reports all of it as JSON in <pre id="probe">.
_PROBE_TAIL = """<script>
(async function () {
  const out = {};
  const rows = () => [...document.querySelectorAll("#rows tr")].map(r => ({
    clip: r.dataset.clip, file: r.children[4].textContent, collection: r.children[5].textContent,
    start: r.children[3].textContent, tags: r.children[6].textContent,
    predicted: r.children[7].textContent}));
  const feature = document.getElementById("feature");
  const collection = document.getElementById("collection");
  out.features = [...feature.options].map(o => o.value);
  out.collections = [...collection.options].map(o => o.value);
  out.initial = {feature: feature.value, collection: collection.value, rows: rows()};
  feature.value = FEATURE; feature.dispatchEvent(new Event("change"));
  out.after_feature = {feature: feature.value, rows: rows(), hash: location.hash};
  collection.value = COLLECTION; collection.dispatchEvent(new Event("change"));
  out.after_collection = {collection: collection.value, rows: rows()};
  const audios = [...document.querySelectorAll("#rows audio")];
  out.can_play = audios.map(a => a.canPlayType("audio/ogg; codecs=vorbis"));
  out.audio = await Promise.all(audios.map(a => new Promise(function (resolve) {
    const src = a.getAttribute("src");
    a.addEventListener("loadedmetadata", () => resolve({src: src, duration: a.duration}));
    a.addEventListener("error", () => resolve({src: src, error: a.error && a.error.code}));
    a.preload = "auto"; a.load();
  })));
  out.errors = window.__errors;
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def _drive_page(page, feature, collection, tmp_path):
    """Open ``page`` (file://) in headless Chromium with the probe injected; returns its report."""
    chromium = _chromium()
    text = open(page, encoding="utf-8").read()
    tail = _PROBE_TAIL.replace("FEATURE", json.dumps(str(feature))).replace(
        "COLLECTION", json.dumps(collection)
    )
    probe = os.path.join(os.path.dirname(page), "probe.html")
    with open(probe, "w", encoding="utf-8") as file:
        file.write(
            text.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace(
                "</body>", tail + "</body>", 1
            )
        )
    try:
        completed = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                "file://" + probe,
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        os.remove(probe)
    match = re.search(r'<pre id="probe">(.*?)</pre>', completed.stdout, re.S)
    assert match, (
        f"the probe did not report (rc {completed.returncode}): {completed.stderr[-2000:]}"
    )
    import html

    return json.loads(html.unescape(match.group(1)))


def test_running_top_k_matches_a_full_sort():
    rng = np.random.default_rng(7)
    clips = [rng.standard_normal((int(rng.integers(1, 6)), 6)) for _ in range(30)]
    collections = [("a", "b", "c")[i % 3] for i in range(30)]
    features = [5, 0, 3]
    topk = listening_lib._RunningTopK(features, 4)
    for i, (clip, collection) in enumerate(zip(clips, collections)):
        topk.update(collection, i, clip, best_window_only=False)
    for row, feature in enumerate(features):
        for collection in ("all", "a", "b", "c"):
            everything = sorted(
                (
                    (-clip[w, feature], i, w)
                    for i, clip in enumerate(clips)
                    if collection in ("all", collections[i])
                    for w in range(len(clip))
                )
            )[:4]
            got = topk.ranking(row, collection)
            assert [(i, w) for _, i, w in got] == [(i, w) for _, i, w in everything]
            np.testing.assert_allclose(
                [v for v, _, _ in got], [-v for v, _, _ in everything], rtol=1e-6
            )
        assert topk.values["a"].shape == (3, 4), "memory stays k per feature and collection"


def test_listening_page_in_headless_chromium(tmp_path):
    root = tmp_path / "corpus"
    _write_level_corpus(root)
    page = listening_lib.listening_page(
        _level_encoder(),
        str(root),
        str(tmp_path / "page"),
        features=[0, 1],
        top_k=3,
        progress=False,
    )
    data = json.loads((tmp_path / "page" / "listening.json").read_text())
    assert data["collections"] == ["indomain", "outdomain"] and data["features"] == [0, 1]
    for feature in (0, 1):
        for collection in ("all", "indomain", "outdomain"):
            expected = _reference_ranking(root, feature, collection, 3)
            got = [
                (os.path.basename(data["clips"][c]["file"]), data["clips"][c]["start"])
                for c, _ in data["top"][str(feature)][collection]
            ]
            assert [name for name, _ in got] == [name for name, _ in expected], (
                feature,
                collection,
            )
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-3)

    report = _drive_page(page.path, 1, "outdomain", tmp_path)
    assert report["errors"] == []
    assert report["features"] == ["0", "1"] and report["collections"] == [
        "all",
        "indomain",
        "outdomain",
    ]
    loudest = [os.path.basename(r["file"]) for r in report["initial"]["rows"]]
    assert loudest == [name for name, _ in _reference_ranking(root, 0, "all", 3)]
    quietest = [os.path.basename(r["file"]) for r in report["after_feature"]["rows"]]
    assert (
        quietest == [name for name, _ in _reference_ranking(root, 1, "all", 3)]
        and quietest != loudest
    )
    assert report["after_feature"]["hash"] == "#feature=1&collection=all"
    rows = report["after_collection"]["rows"]
    assert [os.path.basename(r["file"]) for r in rows] == [
        n for n, _ in _reference_ranking(root, 1, "outdomain", 3)
    ]
    assert {r["collection"] for r in rows} == {"outdomain"}
    assert all(r["start"] == "0:00.0" for r in rows), (
        "the quietest window of a rising clip is its first"
    )
    assert len(report["audio"]) == 3 and all(p in ("probably", "maybe") for p in report["can_play"])
    for audio in report["audio"]:
        assert "error" not in audio, audio
        assert os.path.exists(tmp_path / "page" / audio["src"])
        assert audio["duration"] == pytest.approx(WINDOW / SAMPLE_RATE, abs=0.03)
    tagged = [c for c in data["clips"].values() if c["file"].endswith("indomain_1.wav")]
    assert tagged and tagged[0]["tags"] == ["loud", "sine"]


def test_listening_page_with_tagger_predictions_and_sample_cnn(tmp_path):
    import soundfile

    from keras_clmr.models import MusicTagger

    encoder = tiny_sample_cnn()
    tagger = MusicTagger(encoder, num_classes=4, tags=["a", "b", "c", "d"])
    rng = np.random.default_rng(1)
    os.makedirs(tmp_path / "songs")
    for i in range(3):
        soundfile.write(
            tmp_path / "songs" / f"{i}.wav",
            0.3 * rng.standard_normal(3 * encoder.input_samples),
            SAMPLE_RATE,
        )
    page = listening_lib.listening_page(
        encoder,
        [str(tmp_path / "songs")],
        str(tmp_path / "page"),
        tagger=tagger,
        features=2,
        top_k=2,
        progress=False,
    )
    assert page.features == [0, 1] and len(page.top["0"]["all"]) == 2
    for clip in page.clips.values():
        assert len(clip["predictions"]) == 3 and {name for name, _ in clip["predictions"]} <= {
            "a",
            "b",
            "c",
            "d",
        }
    # The shown predictions are the tagger's own output on that window.
    clip = page.clips[page.top["0"]["all"][0][0]]
    audio, _ = soundfile.read(tmp_path / "songs" / os.path.basename(clip["file"]), dtype="float32")
    start = int(round(clip["start"] * SAMPLE_RATE))
    probabilities = np.asarray(
        tagger.predict(audio[None, start : start + encoder.input_samples], verbose=0)
    )[0]
    best = sorted(zip(["a", "b", "c", "d"], probabilities), key=lambda e: -e[1])[:3]
    assert [n for n, _ in clip["predictions"]] == [n for n, _ in best]
    np.testing.assert_allclose([p for _, p in clip["predictions"]], [p for _, p in best], atol=2e-4)
    # A second build into the same (own) folder replaces it without overwrite=True.
    listening_lib.listening_page(
        encoder,
        str(tmp_path / "songs"),
        str(tmp_path / "page"),
        features=[1],
        top_k=1,
        progress=False,
    )
    assert json.loads((tmp_path / "page" / "listening.json").read_text())["features"] == [1]


def test_listening_page_bad_inputs(tmp_path):
    from keras_clmr.io import OutputExistsError

    encoder = _level_encoder()
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(listening_lib.ListeningInputError, match="No audio found"):
        listening_lib.listening_page(
            encoder, str(tmp_path / "empty"), str(tmp_path / "out"), progress=False
        )
    root = tmp_path / "corpus"
    _write_level_corpus(root)
    with pytest.raises(listening_lib.ListeningInputError, match="encoder has 3 features"):
        listening_lib.listening_page(
            encoder, str(root), str(tmp_path / "out"), features=[0, 7], progress=False
        )
    with pytest.raises(
        listening_lib.ListeningInputError, match="more features than the encoder's 3"
    ):
        listening_lib.listening_page(
            encoder, str(root), str(tmp_path / "out"), features=4, progress=False
        )
    os.makedirs(tmp_path / "foreign")
    (tmp_path / "foreign" / "thesis.tex").write_text("mine")
    with pytest.raises(OutputExistsError):
        listening_lib.listening_page(encoder, str(root), str(tmp_path / "foreign"), progress=False)
    assert os.listdir(tmp_path / "foreign") == ["thesis.tex"]

    class BrokenTagger:  # fails after the snippets started: nothing may be left behind
        backbone = None

    with pytest.raises(TypeError, match="model must be"):
        listening_lib.listening_page(
            encoder, str(root), str(tmp_path / "out"), tagger=BrokenTagger(), progress=False
        )
    assert not os.path.exists(tmp_path / "out")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out")], (
        "no temporary folder left behind"
    )


def test_short_file_warns_and_is_padded(tmp_path):
    import soundfile

    os.makedirs(tmp_path / "short")
    soundfile.write(tmp_path / "short" / "tiny.wav", 0.5 * np.ones(1000), SAMPLE_RATE)
    with pytest.warns(UserWarning, match="tiny.wav.*shorter than one"):
        page = listening_lib.listening_page(
            _level_encoder(),
            str(tmp_path / "short"),
            str(tmp_path / "page"),
            top_k=1,
            progress=False,
        )
    assert len(page.clips) == 1


# ----------------------------------------------------------------------------- taggram and map

from keras_clmr.interpret import maps as maps_lib  # noqa: E402
from keras_clmr.interpret.taggram import taggram as make_taggram  # noqa: E402


def test_taggram_is_the_taggers_output_per_window(tmp_path):
    import soundfile

    from keras_clmr.models import MusicTagger

    encoder = tiny_sample_cnn()
    names = [f"tag{i}" for i in range(6)]
    tagger = MusicTagger(encoder, num_classes=6, tags=names)
    window = encoder.input_samples
    audio = (0.3 * np.random.default_rng(2).standard_normal(4 * window + 100)).astype(np.float32)
    soundfile.write(tmp_path / "song.wav", audio, SAMPLE_RATE, subtype="FLOAT")
    result = make_taggram(
        str(tmp_path / "song.wav"), model=tagger, top_n=3, output=str(tmp_path / "t.png")
    )
    windows = audio[: 4 * window].reshape(4, window)
    reference = np.asarray(tagger.predict(windows, verbose=0), np.float64)
    order = np.argsort(-reference.mean(axis=0), kind="stable")[:3]
    assert result.tags == [names[j] for j in order]
    np.testing.assert_allclose(result.probabilities, reference[:, order], atol=1e-5)
    np.testing.assert_allclose(result.times, np.arange(4) * window / SAMPLE_RATE)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG" and result.path == str(
        tmp_path / "t.png"
    )
    overlapping = make_taggram(
        str(tmp_path / "song.wav"),
        model=tagger,
        top_n=2,
        hop=window / 2 / SAMPLE_RATE,
        output=str(tmp_path / "t2.png"),
    )
    assert overlapping.probabilities.shape == (7, 2)
    with pytest.raises(ValueError, match="top_n"):
        make_taggram(str(tmp_path / "song.wav"), model=tagger, top_n=0)
    soundfile.write(tmp_path / "short.wav", audio[:100], SAMPLE_RATE, subtype="FLOAT")
    with pytest.warns(UserWarning, match="shorter than one"):
        assert make_taggram(
            str(tmp_path / "short.wav"), model=tagger, top_n=2
        ).probabilities.shape == (1, 2)


@pytest.mark.large
def test_pca_projection_matches_a_covariance_eigendecomposition():
    rng = np.random.default_rng(3)
    data = (
        rng.standard_normal((40, 6))
        @ np.diag([5.0, 2.0, 1.0, 0.5, 0.1, 0.1])
        @ np.linalg.qr(rng.standard_normal((6, 6)))[0]
    )
    points, explained = maps_lib.project(data, "pca")
    centred = data - data.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))
    reference = centred @ vectors[:, ::-1][:, :2]
    for axis in range(2):
        sign = np.sign(points[:, axis] @ reference[:, axis])
        np.testing.assert_allclose(
            points[:, axis], sign * reference[:, axis], atol=1e-9 * np.abs(reference).max()
        )
    np.testing.assert_allclose(explained, values[::-1][:2] / values.sum(), rtol=1e-9)
    tsne, none = maps_lib.project(data[:12], "tsne", seed=0)
    assert tsne.shape == (12, 2) and none is None and np.all(np.isfinite(tsne))


def test_embedding_map_png_and_interactive_page(tmp_path):
    import soundfile

    root = tmp_path / "corpus"
    _write_level_corpus(root)
    result = maps_lib.embedding_map(
        str(root), model=_level_encoder(), output_dir=str(tmp_path / "map"), progress=False
    )
    files = sorted(str(p) for p in root.rglob("*.wav"))
    assert result.files == files
    assert result.labels == [os.path.basename(os.path.dirname(f)) for f in files]
    reference = []
    for path in files:
        audio, _ = soundfile.read(path, dtype="float64")
        windows = audio[: len(audio) // WINDOW * WINDOW].reshape(-1, WINDOW)
        power = np.mean(windows**2, axis=1)
        reference.append([power.mean(), -power.mean(), windows.mean()])
    reference = np.asarray(reference) - np.mean(reference, axis=0)
    first_axis = reference @ np.linalg.eigh(np.cov(reference.T))[1][:, -1]
    sign = np.sign(result.points[:, 0] @ first_axis)
    np.testing.assert_allclose(
        result.points[:, 0], sign * first_axis, atol=1e-4 * np.abs(first_axis).max()
    )
    assert (tmp_path / "map" / "map.png").read_bytes()[:4] == b"\x89PNG"

    chromium = _chromium()
    page = tmp_path / "map" / "map.html"
    probe = tmp_path / "map" / "probe.html"
    script = """<script>
    const circles = document.querySelectorAll("#plot circle").length;
    const out = {errors: window.__errors, circles: circles};
    const target = document.querySelector("#plot circle[data-index='3']");
    target.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
    out.info = document.getElementById("info").textContent;
    out.legend = [...document.querySelectorAll("#legend div")].map(d => d.textContent);
    document.querySelector("#legend div[data-label='outdomain']").click();
    out.after_hide = document.querySelectorAll("#plot circle").length;
    const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
    </script>"""
    text = (
        page.read_text()
        .replace("<head>", "<head>" + _PROBE_HEAD, 1)
        .replace("</body>", script + "</body>", 1)
    )
    probe.write_text(text)
    completed = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', completed.stdout, re.S)
    assert match, completed.stderr[-2000:]
    import html

    report = json.loads(html.unescape(match.group(1)))
    assert report["errors"] == [] and report["circles"] == len(files)
    assert report["info"].startswith(files[3] + "\nlabel: indomain")
    assert report["legend"] == ["indomain (5)", "outdomain (3)"] and report["after_hide"] == 5


def test_embedding_map_bad_inputs(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(maps_lib.MapInputError, match="No audio files"):
        maps_lib.embedding_map(str(tmp_path / "empty"), model=_level_encoder())
    with pytest.raises(maps_lib.MapInputError, match="method"):
        maps_lib.embedding_map(str(tmp_path / "empty"), model=_level_encoder(), method="umap")
    root = tmp_path / "corpus"
    _write_level_corpus(root)
    with pytest.raises(maps_lib.MapInputError, match="3 labels for 8 files"):
        maps_lib.embedding_map(
            str(root), model=_level_encoder(), labels=["a", "b", "c"], progress=False
        )
    with pytest.raises(maps_lib.MapInputError, match="at least 4"):
        maps_lib.embedding_map(
            sorted(str(p) for p in root.rglob("*.wav"))[:3],
            model=_level_encoder(),
            method="tsne",
            progress=False,
        )


def test_listening_page_reads_prepared_datasets_next_to_folders(tmp_path):
    from keras_clmr.data import datasets, prepare

    root = tmp_path / "corpus"
    _write_level_corpus(root)
    prepared = tmp_path / "outdomain"
    prepare.prepare(
        datasets.folder(str(root / "outdomain")),
        str(prepared),
        workers=1,
        clips_per_shard=2,
        progress=False,
    )
    page = listening_lib.listening_page(
        _level_encoder(),
        [str(root / "indomain"), str(prepared)],
        str(tmp_path / "page"),
        features=[0, 1],
        top_k=3,
        progress=False,
    )
    assert page.collections == ["indomain", "outdomain"]
    for feature in (0, 1):
        for collection in ("all", "indomain", "outdomain"):
            expected = _reference_ranking(root, feature, collection, 3)
            got = [
                (os.path.basename(page.clips[c]["file"]), page.clips[c]["start"])
                for c, _ in page.top[str(feature)][collection]
            ]
            assert [n for n, _ in got] == [n for n, _ in expected], (feature, collection)
            # int16 storage shifts values by ~1e-5 at most: same order, same starts.
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-3)
    assert all(os.path.getsize(tmp_path / "page" / c["audio"]) > 0 for c in page.clips.values())


# ----------------------------------------------------------------------------- per-tag AUC plot


def test_per_tag_figure_sorted_bars_with_chance_and_prevalence(tmp_path):
    from keras_clmr.evaluation import reports

    rows = [
        {"tag": "rock", "roc_auc": 0.7, "pr_auc": 0.30, "test_positives": 20},
        {"tag": "jazz", "roc_auc": 0.9, "pr_auc": 0.10, "test_positives": 5},
        {"tag": "none", "roc_auc": float("nan"), "pr_auc": float("nan"), "test_positives": 0},
        {"tag": "pop", "roc_auc": 0.6, "pr_auc": 0.55, "test_positives": 40},
    ]
    results = {"per_tag": rows, "task": "linear", "data": {"n_test_clips": 100}}
    figure = reports.per_tag_figure(results)
    try:
        roc, pr = figure.axes[:2]
        assert [t.get_text() for t in roc.get_xticklabels()] == ["jazz", "rock", "pop", "none"]
        assert [b.get_height() for b in roc.patches] == pytest.approx([0.9, 0.7, 0.6, 0.0])
        assert [t.get_text() for t in pr.get_xticklabels()] == ["pop", "rock", "jazz", "none"]
        assert [b.get_height() for b in pr.patches] == pytest.approx([0.55, 0.30, 0.10, 0.0])
        chance = [line for line in roc.get_lines() if line.get_label() == "chance (0.5)"]
        assert chance and set(chance[0].get_ydata()) == {0.5}
        ticks = pr.collections[0].get_offsets()
        np.testing.assert_allclose(np.asarray(ticks)[:, 1], [0.40, 0.20, 0.05, 0.0])
        for axis in (roc, pr):  # legends sit right of the plotting area, not over bars
            anchor = axis.get_legend().get_bbox_to_anchor().transformed(axis.transAxes.inverted())
            assert anchor.x0 > 1.0
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)
    reports.per_tag_plot(results, str(tmp_path / "per_tag_auc.png"))
    assert (tmp_path / "per_tag_auc.png").read_bytes()[:4] == b"\x89PNG"


def test_training_curves_png_from_the_probe_history(tmp_path):
    from keras_clmr.evaluation import reports

    history = {
        "epochs_run": 3,
        "best_epoch": 2,
        "best_val_loss": 0.5,
        "train_loss": [0.9, 0.6, 0.4],
        "val_loss": [0.8, 0.5, 0.55],
    }
    figure = reports.training_curves_figure(history)
    try:
        (axis,) = figure.axes
        curves = {line.get_label(): line for line in axis.get_lines()}
        assert list(curves["train_loss"].get_xdata()) == [1, 2, 3]
        assert list(curves["val_loss"].get_ydata()) == pytest.approx([0.8, 0.5, 0.55])
        assert set(curves["best epoch (2)"].get_xdata()) == {2}
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)
    rows = [{"tag": "rock", "roc_auc": 0.7, "pr_auc": 0.3, "test_positives": 2}]
    results = {
        "per_tag": rows,
        "task": "linear",
        "data": {"n_test_clips": 10, "label_fraction": 1.0},
        "metrics": {"roc_auc_tag": 0.7},
        "protocol": {},
        "encoder": {"class_name": "SampleCNN"},
        "history": history,
    }
    paths = reports.write_results(str(tmp_path / "with"), results)
    assert open(paths["training_curves.png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # No per-epoch history (e.g. a results file without one): no curves file, nothing half-written.
    results["history"] = {"epochs_run": 0, "train_loss": [], "val_loss": []}
    paths = reports.write_results(str(tmp_path / "without"), results)
    assert "training_curves.png" not in paths
    assert sorted(os.listdir(tmp_path / "without")) == sorted(
        os.path.basename(p) for p in paths.values()
    )
    with pytest.raises(ValueError, match="no per-epoch series"):
        reports.training_curves_figure(results["history"])


@pytest.mark.large
def test_demo_interpret_stage_writes_every_picture(tmp_path):
    from keras_clmr.data.demo import TAGS
    from keras_clmr.models import MusicTagger
    from training.demo import interpret_pictures

    tagger = MusicTagger(tiny_sample_cnn(), num_classes=len(TAGS), tags=list(TAGS))
    output = tmp_path / "interpret"
    paths = interpret_pictures(tagger, output, n_clips=4, seconds=0.5, steps=3, features=2)
    assert set(paths) == {"filters", "filters_random_init", "taggram", "map", "listening"}
    for key in ("filters", "filters_random_init", "taggram", "map"):
        assert open(paths[key], "rb").read(4) == b"\x89PNG", key
    assert (output / "map" / "map.html").exists()
    page = json.loads((output / "listening" / "listening.json").read_text())
    assert page["features"] == [0, 1] and os.path.basename(paths["listening"]) == "index.html"
    # Again into the same folder (a second `make demo`): the pages are replaced, not refused.
    assert interpret_pictures(tagger, output, n_clips=4, seconds=0.5, steps=3, features=2) == paths


# ----------------------------------------------------------------------------- command line


@pytest.mark.large
def test_explain_command_line(tmp_path, capsys):
    import keras_clmr
    from keras_clmr.interpret import command

    preset = tmp_path / "tiny-preset"
    keras_clmr.save_preset(tiny_sample_cnn(), str(preset))
    png = tmp_path / "spectra.png"
    args = ["explain", "filters", "--model", str(preset), "--layers", "1,block_3", "--steps", "3"]
    assert command.main([*args, "--output", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and capsys.readouterr().out.strip() == str(png)
    assert command.main([*args, "--random-init", "-o", str(tmp_path / "random.png")]) == 0
    assert command.main(["filters", "--model", str(preset), "--layers", "12", "-o", str(png)]) == 2
    assert "no filter layer 12" in capsys.readouterr().err
    root = tmp_path / "corpus"
    _write_level_corpus(root)
    out = tmp_path / "page"
    listen = ["explain", "listen", str(root), "--model", str(preset), "--features", "2", "-o"]
    assert command.main([*listen, str(out)]) == 0
    assert json.loads((out / "listening.json").read_text())["features"] == [0, 1]
    assert command.main(["map", str(root), "--model", str(preset), "-o", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "map.html").exists()
    from keras_clmr.models import MusicTagger

    tagger = tmp_path / "tiny-tagger"
    keras_clmr.save_preset(
        MusicTagger(tiny_sample_cnn(), num_classes=4, tags=list("abcd")), str(tagger)
    )
    song = str(root / "indomain" / "indomain_0.wav")
    taggram_png = tmp_path / "taggram.png"
    taggram_args = ["taggram", song, "--model", str(tagger), "--top-n", "2", "-o", str(taggram_png)]
    assert command.main(taggram_args) == 0 and taggram_png.read_bytes()[:4] == b"\x89PNG"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        command.main(["map", str(empty), "--model", str(preset), "-o", str(tmp_path / "m2")]) == 2
    )
    assert "No audio files" in capsys.readouterr().err
