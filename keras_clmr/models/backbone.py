"""Base classes: ``Backbone`` (audio -> embedding) and ``Task`` (a backbone with a head).

Code elsewhere asks "what is this model?" through these classes (``isinstance``), never
through class-name strings; ``encoder_of`` answers "which encoder is in this model".
"""

import keras


def _load_preset(cls, name_or_path, kwargs):
    from keras_clmr import hub  # hub sits above models: import on use

    model = hub.load_pretrained(name_or_path, **kwargs)
    if not isinstance(model, cls):
        raise TypeError(
            f"{name_or_path!r} holds a {type(model).__name__}, not a {cls.__name__}; "
            f"load it with keras_clmr.load_pretrained or the matching class."
        )
    return model


class Backbone(keras.Model):
    """A model mapping mono audio [B, input_samples] to embeddings [B, embedding_dim].

    Subclasses set ``input_samples`` (window length), ``sample_rate`` (Hz) and
    ``embedding_dim`` in their constructor; backbones know nothing of training.
    """

    input_samples = None
    sample_rate = None
    embedding_dim = None

    @classmethod
    def from_preset(cls, name_or_path, **kwargs):
        """Load a preset (registry name, ``hf://`` handle or folder) holding this class.

        ``kwargs`` go to ``keras_clmr.load_pretrained`` (``revision``, ``cache_dir``, ...).
        """
        kwargs.setdefault("task", "embed")
        return _load_preset(cls, name_or_path, kwargs)

    def save_to_preset(self, preset_dir, **kwargs):
        """Write this model as a preset folder (``keras_clmr.save_preset``); returns its path."""
        from keras_clmr import hub

        return hub.save_preset(self, preset_dir, **kwargs)


class Task(keras.Model):
    """A backbone with a head (e.g. ``MusicTagger``); the backbone is ``self.backbone``."""

    @classmethod
    def from_preset(cls, name_or_path, **kwargs):
        """Load a preset holding this task (``task="tag"`` for registry names)."""
        kwargs.setdefault("task", "tag")
        return _load_preset(cls, name_or_path, kwargs)

    def save_to_preset(self, preset_dir, **kwargs):
        """Write this task as a preset folder (``keras_clmr.save_preset``); returns its path."""
        from keras_clmr import hub

        return hub.save_preset(self, preset_dir, **kwargs)
