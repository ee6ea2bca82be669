"""`make demo`: the whole zoo on the offline demo corpus, in a few minutes on a CPU.

1. pretrain a small CLMR on the synthetic demo corpus (training/pretrain.py);
2. linear probe of its encoder on the corpus's tags, next to the same probe on a randomly
   initialised encoder (training/linear_eval.py);
3. save the trained demo tagger as a preset, load it back from the folder and from a local
   Hugging Face cache with HF_HUB_OFFLINE=1 (keras_clmr.load_pretrained), and tag a demo
   file in Python and with the `keras-clmr` console script;
4. export the preset to SavedModel and ONNX (parity-checked), render its model card, and
   run `export.publish --dry_run`;
5. interpretability pictures (keras_clmr.interpret): filter spectra of the demo encoder next
   to those of a randomly initialised one, a taggram, a 2-D map and a listening page of a
   small demo corpus.

Everything goes to demo_output/ (or $DEMO_OUTPUT).
"""

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.abspath(os.environ.get("DEMO_OUTPUT", os.path.join(REPO, "demo_output")))
SMALL_CHANNELS = "16,16,16,32,32,32,32,32,32,64,64"
DEMO_EPOCHS = int(os.environ.get("DEMO_EPOCHS", "12"))


def stage(title):
    print(f"\n=== {title} ===", flush=True)


def pretrain():
    stage("1. Pretraining a small CLMR on the demo corpus")
    run_dir = os.path.join(OUTPUT, "pretrain")
    command = [
        sys.executable,
        "-m",
        "training.pretrain",
        "--model=clmr",
        "--dataset=demo",
        f"--channels={SMALL_CHANNELS}",
        "--projection_dim=64",
        "--batch_size=16",
        f"--epochs={DEMO_EPOCHS}",
        f"--output_dir={run_dir}",
    ]
    if os.path.exists(os.path.join(run_dir, "checkpoints", "state.json")):
        command.append("--resume")
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return run_dir


def run(*args):
    command = [sys.executable, "-m", *args]
    print("$ python -m", " ".join(args), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def linear_probe(run_dir):
    stage("2. Linear probe: pretrained vs randomly initialised encoder")
    output = os.path.join(OUTPUT, "linear_eval")
    run(
        "training.linear_eval",
        f"--checkpoint={run_dir}",
        "--dataset=demo",
        "--compare_random",
        f"--output_dir={output}",
    )
    return output


def preset_round_trip(
    model, output_dir, audio_path, repo_id="keras-clmr/demo", name="demo", top_k=3
):
    """Save ``model`` as a preset, load it back (folder; local HF cache, offline), run it on a file.

    Writes ``output_dir/preset`` and ``output_dir/hf_cache`` (a Hugging Face cache holding the
    preset as ``repo_id``), checks that both loaded copies give the same outputs as ``model``,
    then tags (a tagger) or embeds (an encoder) ``audio_path``. Returns a JSON-able summary.
    """
    import numpy as np
    from keras import ops

    from keras_clmr import hub, inference
    from keras_clmr.models import encoder_of, is_pretrainer, is_tagger

    output_dir = os.fspath(output_dir)
    preset_dir = hub.save_preset(
        model, os.path.join(output_dir, "preset"), name=name, overwrite=True
    )
    from_folder = hub.load_pretrained(preset_dir)
    cache = os.path.join(output_dir, "hf_cache")
    snapshot_dir = hub.populate_local_cache(preset_dir, repo_id, cache_dir=cache)
    from_hub = hub.load_preset(hub.snapshot(f"hf://{repo_id}", cache_dir=cache, offline=True))
    stored = encoder_of(model) if is_pretrainer(model) else model
    samples = int(hub.model_attribute(stored, "input_samples"))
    window = np.random.default_rng(0).uniform(-0.5, 0.5, (2, samples)).astype("float32")
    expected = ops.convert_to_numpy(stored(window, training=False))
    max_diff = max(
        float(np.max(np.abs(ops.convert_to_numpy(m(window, training=False)) - expected)))
        for m in (from_folder, from_hub)
    )
    if max_diff > 1e-6:
        raise hub.PresetError(f"Preset round trip changed the outputs (max |diff| {max_diff}).")
    summary = {
        "preset_dir": preset_dir,
        "hf_cache": cache,
        "snapshot": snapshot_dir,
        "handle": f"hf://{repo_id}",
        "round_trip_max_abs_diff": max_diff,
        "files": sorted(hub.read_metadata(preset_dir)["files"]),
    }
    if is_tagger(from_hub):
        result = inference.tag(audio_path, model=from_hub, top_k=top_k)
        summary.update(
            audio=os.fspath(audio_path),
            windows=int(result.probabilities.shape[0]),
            top_tags=result.top,
        )
    else:
        result = inference.embed(audio_path, model=from_hub)
        summary.update(audio=os.fspath(audio_path), embeddings_shape=list(result.embeddings.shape))
    return summary


def presets(probe_dir):
    stage("3. Preset round trip (folder and offline HF cache) and tagging a file")
    import json

    import keras
    import soundfile

    import keras_clmr
    from keras_clmr.data.demo import make_demo_corpus

    tagger = keras.saving.load_model(os.path.join(probe_dir, "tagger.keras"))
    folder = os.path.join(OUTPUT, "presets")
    os.makedirs(folder, exist_ok=True)
    corpus = make_demo_corpus(
        n_clips=1, seconds=12.0, sample_rate=tagger.backbone.sample_rate, seed=7
    )
    wav = os.path.join(folder, "demo_clip.wav")
    soundfile.write(wav, corpus.audio[0], corpus.sample_rate)
    summary = preset_round_trip(tagger, folder, wav, repo_id="keras-clmr/demo")
    print(json.dumps(summary, indent=1))
    true_tags = ", ".join(t for t, v in zip(corpus.tags, corpus.labels[0]) if v)
    print(f"true tags of {os.path.basename(wav)}: {true_tags}")
    result = keras_clmr.tag(wav, model=summary["preset_dir"], top_k=3)
    print("keras_clmr.tag ->", result.top)
    tags_json = os.path.join(folder, "tags.json")
    cli = os.path.join(os.path.dirname(sys.executable), "keras-clmr")
    print(
        f"$ keras-clmr tag {wav} --model {summary['preset_dir']} --output {tags_json}", flush=True
    )
    subprocess.run(
        [cli, "tag", wav, "--model", summary["preset_dir"], "--output", tags_json],
        check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    return summary["preset_dir"]


def export_and_publish(preset_dir, probe_dir):
    stage("4. Export (SavedModel + ONNX, parity-checked), model card, publish --dry_run")
    run("export.export", f"--model={preset_dir}", "--format=all")
    run(
        "export.model_card",
        f"--preset_dir={preset_dir}",
        f"--results={os.path.join(probe_dir, 'results.json')}",
        "--dataset=demo",
        "--repo_id=keras-clmr/demo",
        "--training=CLMR pretraining on the synthetic demo corpus (make demo), "
        "then a linear probe on its tags.",
    )
    run("export.publish", f"--preset_dir={preset_dir}", "--repo_id=keras-clmr/demo", "--dry_run")


def interpret_pictures(
    tagger,
    output_dir,
    n_clips=24,
    seconds=6.0,
    steps=100,
    features=8,
    top_k=3,
    seed=0,
    progress=False,
):
    """Stage 5: the interpret pictures of a demo ``tagger`` (a MusicTagger) in ``output_dir``.

    Kept cheap for a CPU: a few gradient-ascent steps, ``features`` features and ``top_k`` clips
    per feature over ``n_clips`` clips of the demo corpus (written as wav + labels.csv in
    ``output_dir/corpus``). Returns {picture: path}.
    """
    import keras

    from keras_clmr import interpret
    from keras_clmr.data.demo import write_demo_corpus

    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    encoder = tagger.backbone
    keras.utils.set_random_seed(seed)  # the same architecture with fresh (seeded) weights
    random_encoder = type(encoder).from_config(encoder.get_config())
    paths = {}
    for key, model, name in (
        ("filters", encoder, "demo CLMR encoder"),
        ("filters_random_init", random_encoder, "random init"),
    ):
        paths[key] = interpret.filter_spectra(
            model,
            steps=steps,
            seed=seed,
            model_name=name,
            output=os.path.join(output_dir, f"{key}.png"),
        ).path
    corpus_dir = os.path.join(output_dir, "corpus", "demo")
    corpus = write_demo_corpus(
        corpus_dir,
        n_clips=n_clips,
        seconds=seconds,
        sample_rate=int(encoder.sample_rate),
        seed=seed + 1,
    )
    first = os.path.join(corpus_dir, f"{corpus.ids[0]}.wav")
    paths["taggram"] = interpret.taggram(
        first,
        model=tagger,
        top_n=min(8, len(tagger.tags)),
        output=os.path.join(output_dir, "taggram.png"),
    ).path
    timbres = {
        f"{clip_id}.wav": attributes["timbre"]
        for clip_id, attributes in zip(corpus.ids, corpus.attributes)
    }
    paths["map"] = interpret.embedding_map(
        corpus_dir,
        model=encoder,
        labels=timbres,
        output_dir=os.path.join(output_dir, "map"),
        overwrite=True,
        progress=progress,
        title="demo corpus coloured by timbre",
    ).png
    paths["listening"] = interpret.listening_page(
        encoder,
        os.path.dirname(corpus_dir),
        os.path.join(output_dir, "listening"),
        tagger=tagger,
        features=features,
        top_k=top_k,
        overwrite=True,
        progress=progress,
    ).path
    return paths


def interpret_stage(probe_dir):
    stage("5. Interpretability: filter spectra (trained vs random init), taggram, map, listening")
    import keras

    tagger = keras.saving.load_model(os.path.join(probe_dir, "tagger.keras"))
    paths = interpret_pictures(tagger, os.path.join(OUTPUT, "interpret"), progress=True)
    for key, path in paths.items():
        print(f"{key:>20}: {path}")
    print(f"{'per-tag AUC plot':>20}: {os.path.join(probe_dir, 'per_tag_auc.png')}")
    return paths


def main():
    start = time.time()
    os.makedirs(OUTPUT, exist_ok=True)
    run_dir = pretrain()
    probe_dir = linear_probe(run_dir)
    preset_dir = presets(probe_dir)
    export_and_publish(preset_dir, probe_dir)
    interpret_stage(probe_dir)
    print(
        f"\nDemo finished in {time.time() - start:.0f} s. Pretrained encoder: "
        f"{os.path.join(run_dir, 'encoder.keras')}; preset with exports and card: {preset_dir}"
    )


if __name__ == "__main__":
    main()
