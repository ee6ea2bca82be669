import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {BACKEND}"


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.backend.clear_session()


def tiny_sample_cnn(**kwargs):
    """A SampleCNN with the full block structure but short input (3**5 samples) and few channels."""
    from keras_clmr.models import SampleCNN

    config = dict(strides=(3, 3, 3, 3, 2, 2, 2, 2, 2), channels=(8, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16))
    config.update(kwargs)
    return SampleCNN(**config)
