"""keras_clmr._optional.require: the module when installed, else an error naming the extra."""

import json

import pytest

from keras_clmr._optional import EXTRAS, MissingExtraError, require


def test_installed_module_is_returned():
    assert require("json") is json


def test_missing_module_names_the_extra_and_the_purpose(monkeypatch):
    monkeypatch.setitem(EXTRAS, "keras_clmr_missing_module", "export")
    with pytest.raises(MissingExtraError) as caught:
        require("keras_clmr_missing_module.sub", purpose="ONNX export")
    message = str(caught.value)
    assert "pip install 'keras-clmr[export]'" in message and "for ONNX export" in message
    assert isinstance(caught.value, ImportError)  # callers catching ImportError still work
    assert caught.value.name == "keras_clmr_missing_module"


def test_missing_module_without_an_extra_names_the_package():
    with pytest.raises(MissingExtraError, match="pip install keras_clmr_nowhere"):
        require("keras_clmr_nowhere")


def test_every_extra_named_exists_in_pyproject():
    import os

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras)
    assert {"export", "plots"} <= set(extras["test"][0].split("[")[1].rstrip("]").split(","))
