"""CLMR and PEMR presets: the original authors' release files, converted locally on first use.

No converted copy is published: ``handles`` name where one would go, and are followed only once
``revision`` pins a commit (none does). ``assets`` lists what is known of a release file before
its first download (nothing yet; the first download's sha256 is then kept in the cache).
Scores are the authors' READMEs'.
"""

from keras_clmr.presets.registry import Preset, hub_handle

SAMPLE_CNN_PARAMS = 2_368_512
MTAT_HEAD_PARAMS = 512 * 50 + 50
_CLMR_PROTOCOL = (
    "MagnaTagATune (50 tags), encoder frozen; head trained on 59049-sample crops; test: each "
    "track cut into consecutive non-overlapping 59049-sample chunks, per-chunk sigmoid "
    "outputs averaged, macro ROC-AUC / PR-AUC (sklearn). Figures from the CLMR README, "
    "not re-measured by keras_clmr."
)
_CLMR_RELEASES = "https://github.com/Spijkervet/CLMR/releases/download"


def _mtat_scores(linear_roc, linear_pr, mlp_roc, mlp_pr):
    return tuple(
        {"task": "tag", "dataset": "MTAT", "metric": metric, "value": value, "head": head}
        for head, metric, value in (
            ("linear", "ROC-AUC", linear_roc),
            ("linear", "PR-AUC", linear_pr),
            ("mlp", "ROC-AUC", mlp_roc),
            ("mlp", "PR-AUC", mlp_pr),
        )
    )


def _clmr_sample_cnn(name, description, scores, embed_file, tag_file):
    """A CLMR release: SampleCNN at 22050 Hz, its encoder checkpoint and its linear MTAT head
    (``embed_file``/``tag_file`` below the CLMR releases URL)."""
    return Preset(
        name=name,
        description=description,
        architecture="SampleCNN",
        handles={"embed": hub_handle(name), "tag": hub_handle(f"{name}-tagger")},
        sample_rate=22050,
        input_samples=59049,
        params={"embed": SAMPLE_CNN_PARAMS, "tag": SAMPLE_CNN_PARAMS + MTAT_HEAD_PARAMS},
        scores=scores,
        protocol=_CLMR_PROTOCOL,
        source={"embed": f"{_CLMR_RELEASES}/{embed_file}", "tag": f"{_CLMR_RELEASES}/{tag_file}"},
    )


PRESETS = (
    _clmr_sample_cnn(
        "clmr-mtat",
        "CLMR 2.0 release: SampleCNN pretrained with SimCLR on MagnaTagATune "
        "(48 pairs = 96 views per batch, 10,000 epochs), 22050 Hz; 'tag' adds the "
        "released linear MTAT head.",
        _mtat_scores(88.7, 35.6, 89.3, 36.0),
        "2.0/clmr_checkpoint_10000.zip",
        "2.0/finetuner_checkpoint_200.zip",
    ),
    _clmr_sample_cnn(
        "clmr-mtat-1550",
        "CLMR 1.0 release: SampleCNN pretrained with SimCLR on MagnaTagATune "
        "(batch 48, 1,550 epochs), 22050 Hz; 'tag' adds the released linear MTAT "
        "head.",
        _mtat_scores(87.71, 34.27, 88.47, 34.96),
        "1.0/clmr_checkpoint_1550.pt",
        "1.0-l/finetuner_checkpoint_20.pt",
    ),
    Preset(
        name="pemr-mtat",
        description=(
            "PEMR release: FCN on log-mel (128 x 462 frames per 59049-sample window at "
            "22050 Hz) pretrained on MagnaTagATune (batch 48, 300 epochs). Encoder only: "
            "the authors released no tagging head."
        ),
        architecture="FCN",
        handles={"embed": hub_handle("pemr-mtat")},
        sample_rate=22050,
        input_samples=59049,
        params={"embed": 371_460},  # 370,562 trainable + 898 BatchNorm statistics (FCN)
        scores=(),
        protocol="No published PEMR scores were verified.",
        source={
            "embed": "https://github.com/yaoodng7/PEMR/releases/download/pre-trained/"
            "pre-trained_model.ckpt"
        },
    ),
)
