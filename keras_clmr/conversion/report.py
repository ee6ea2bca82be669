"""Writing converted models as preset folders: metadata (parity figures) and a model card."""

from keras_clmr import cards, presets


def save_converted(
    model,
    metadata,
    output,
    name=None,
    description=None,
    reported_scores=(),
    license_id="apache-2.0",
    source_url=None,
    overwrite=False,
    encoder_only=None,
):
    """Write a converted model as a preset folder with ``keras_clmr.hub.save_preset``.

    The conversion figures (parity, parameter counts, key report) go into metadata.json's
    ``evaluation`` (under ``conversion``), the source file into ``source_checkpoint``, and the
    card (``keras_clmr.cards``) shows the parity table and the published scores.
    """
    from keras_clmr.hub import save_preset

    source = dict(metadata.get("converted_from") or {})
    if source_url:
        source["url"] = source_url
    source["format"] = metadata.get("source_format")
    evaluation = {"conversion": {k: v for k, v in metadata.items() if k != "converted_from"}}
    if reported_scores:
        evaluation["reported_scores"] = {
            "note": "published by the original authors; not re-measured by keras_clmr",
            "scores": list(reported_scores),
        }
    name = name or "converted"
    description = description or f"Converted {metadata.get('source_format')} checkpoint."
    conversion = {**metadata, "converted_from": source}

    def card(preset_metadata, config):
        info = cards.describe_metadata(preset_metadata, config)
        info["license"] = license_id
        if name in presets.preset_names():
            info["registry_name"] = name
        return str(
            cards.render_card(
                info, training=cards.conversion_notes(conversion), scores=list(reported_scores)
            )
        )

    return save_preset(
        model,
        output,
        encoder_only=encoder_only,
        name=name,
        description=description,
        source_checkpoint=source,
        evaluation=evaluation,
        model_card=card,
        overwrite=overwrite,
    )
