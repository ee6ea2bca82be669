"""musicnn presets (Pons & Serra 2019): converted on first use from the musicnn 0.1.0 wheel.

The builder is named by a dotted path and imported by ``keras_clmr.hub`` only when a preset is
built, so the registry needs neither the models nor the conversion code. Scores are the ones
each model's ``experiment.result`` in the wheel reports.
"""

from keras_clmr.presets.registry import Preset, hub_handle

BUILDER = "keras_clmr.conversion.musicnn:build_preset"
SAMPLE_RATE = 16000
INPUT_SAMPLES = (187 - 1) * 256  # (patch frames - 1) * hop: 3 s windows at 16 kHz
_WHEEL = "pip install --no-deps musicnn==0.1.0"
_PROTOCOL = (
    "As reported by the musicnn authors (experiment.result in the wheel); "
    "not re-measured by keras_clmr."
)

# name: (backbone/tagger parameters, dataset, ROC-AUC, PR-AUC, what it is); the
# builder maps each name to its model in the wheel.
MODELS = {
    "musicnn-mtt": (
        782_029,
        792_079,
        "MTAT",
        90.67,
        38.31,
        "musicnn trained on MagnaTagATune (50 tags)",
    ),
    "musicnn-msd": (
        782_029,
        792_079,
        "MSD",
        88.02,
        28.91,
        "musicnn trained on the Million Song Dataset (50 tags)",
    ),
    "vgg-mtt": (
        594_180,
        607_030,
        "MTAT",
        90.30,
        38.23,
        "musicnn's VGG baseline trained on MagnaTagATune (50 tags)",
    ),
    "vgg-msd": (
        594_180,
        607_030,
        "MSD",
        87.68,
        28.19,
        "musicnn's VGG baseline trained on the Million Song Dataset (50 tags)",
    ),
}


def _preset(name, backbone_params, tagger_params, dataset, roc, pr, what):
    handle = hub_handle(name)
    return Preset(
        name=name,
        description=(
            f"{what}, Pons & Serra 2019, 16 kHz, 3 s windows; converted from the musicnn "
            "0.1.0 wheel (parity with the original TF1 graph <= 1e-4)."
        ),
        architecture="Musicnn",
        handles={"embed": handle, "tag": handle},
        sample_rate=SAMPLE_RATE,
        input_samples=INPUT_SAMPLES,
        params={"embed": backbone_params, "tag": tagger_params},
        scores=(
            {"task": "tag", "dataset": dataset, "metric": "ROC-AUC", "value": roc, "head": "own"},
            {"task": "tag", "dataset": dataset, "metric": "PR-AUC", "value": pr, "head": "own"},
        ),
        protocol=_PROTOCOL,
        source={"embed": _WHEEL, "tag": _WHEEL},
        license="isc",
        local_builder=BUILDER,
    )


PRESETS = tuple(_preset(name, *entry) for name, entry in MODELS.items())
