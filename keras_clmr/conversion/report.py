"""Writing converted models as preset folders: metadata (parity figures) and a model card."""

import json


def _fmt(value):
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def parity_lines(metadata):
    """Markdown table rows of the parity figures in a conversion's metadata."""
    rows = []
    for section, label in ((metadata, "model"), (metadata.get("finetuner") or {}, "fine-tuner head")):
        parity = section.get("parity")
        if not parity:
            continue
        for output, diff in parity["max_abs_diff"].items():
            rows.append(f"| {label} | {output} | {_fmt(diff)} | {_fmt(parity['tolerance'])} |")
    return rows


def model_card(name, description, metadata, reported_scores=(), license_id="apache-2.0", usage_task="embed"):
    """A README.md for a converted preset: source, parity figures, parameter counts, reported scores."""
    source = metadata.get("converted_from", {})
    source_text = source.get("url") or source.get("package") or source.get("file") or "?"
    lines = [
        "---",
        "library_name: keras",
        f"license: {license_id}",
        "tags:",
        "- keras_clmr",
        "- audio",
        "- music",
        "- converted",
        "---",
        "",
        f"# {name}",
        "",
        description,
        "",
        "## Usage",
        "",
        "```python",
        "import keras_clmr",
        f'model = keras_clmr.load_pretrained("{name}", task="{usage_task}")',
    ]
    if usage_task == "tag":
        lines.append(f'result = keras_clmr.tag("song.mp3", model="{name}")  # per-window and clip-level tags')
    else:
        lines.append(f'result = keras_clmr.embed("song.mp3", model="{name}")  # embeddings [T, D] + start times')
    lines += [
        "```",
        "",
        "## Conversion",
        "",
        f"- Source: {source_text}" + (f" (sha256 `{source['sha256']}`)" if source.get("sha256") else ""),
        f"- Source format: `{metadata.get('source_format')}`",
        "- Converted with `keras_clmr.conversion`; every source tensor was used or is listed in "
        "`metadata.json` with the reason it was left out.",
        "",
        "| part | output | max abs difference | tolerance |",
        "|---|---|---|---|",
        *parity_lines(metadata),
        "",
    ]
    parity = metadata.get("parity") or {}
    if parity:
        lines += [f"Reference: {parity.get('reference')}. Inputs: {parity.get('inputs')}.", ""]
    counts = metadata.get("parameter_counts") or parity.get("parameter_counts")
    if counts:
        lines += ["Parameter counts (source vs Keras): `" + json.dumps(counts) + "`", ""]
    if reported_scores:
        lines += ["## Published scores (reported by the original authors, not re-measured by keras_clmr)", "",
                  "| dataset | metric | value | head |", "|---|---|---|---|"]
        for score in reported_scores:
            lines.append(f"| {score['dataset']} | {score['metric']} | {score['value']} | {score.get('head', '')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def save_converted(model, metadata, output, name=None, description=None, reported_scores=(), license_id="apache-2.0",
                   source_url=None, overwrite=False, encoder_only=None):
    """Write a converted model as a preset folder with ``keras_clmr.hub.save_preset``.

    The conversion figures (parity, parameter counts, key report) go into metadata.json's
    ``evaluation`` (under ``conversion``); the source file into ``source_checkpoint``.
    """
    from keras_clmr.hub import is_tagger, save_preset

    source = dict(metadata.get("converted_from") or {})
    if source_url:
        source["url"] = source_url
    source["format"] = metadata.get("source_format")
    evaluation = {"conversion": {k: v for k, v in metadata.items() if k != "converted_from"}}
    if reported_scores:
        evaluation["reported_scores"] = {"note": "published by the original authors; not re-measured by keras_clmr",
                                         "scores": list(reported_scores)}
    name = name or "converted"
    task = "tag" if is_tagger(model) else "embed"
    card = model_card(name, description or f"Converted {metadata.get('source_format')} checkpoint.", metadata,
                      reported_scores, license_id, usage_task=task)
    return save_preset(model, output, encoder_only=encoder_only, name=name, description=description,
                       source_checkpoint=source, evaluation=evaluation, model_card=card, overwrite=overwrite)
