"""Which role a model plays (pretrainer, tagger, backbone), answered by its base class."""

from keras_clmr.models.backbone import Task
from keras_clmr.models.pretrainer import Pretrainer


def is_pretrainer(model):
    """True for a contrastive pretrainer (``CLMR``, ``PEMR``, any ``Pretrainer`` subclass)."""
    return isinstance(model, Pretrainer) and getattr(model, "encoder", None) is not None


def is_tagger(model):
    """True for a task with a backbone and a head (``MusicTagger``)."""
    return isinstance(model, Task) and getattr(model, "backbone", None) is not None


def encoder_of(model):
    """The encoder inside ``model``: a tagger's ``backbone``, a pretrainer's ``encoder``, else
    ``model`` itself (a backbone, or any model used as its own encoder)."""
    if is_tagger(model):
        return model.backbone
    if is_pretrainer(model):
        return model.encoder
    return model
