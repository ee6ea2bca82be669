"""benchmarks.gpu_check --smoke: every part runs on a CPU and the report says so."""

import pytest

from conftest import BACKEND


@pytest.mark.large
@pytest.mark.skipif(BACKEND != "tensorflow", reason="gpu_check runs on TensorFlow")
def test_smoke_report_on_cpu():
    from benchmarks import gpu_check

    report = gpu_check.main(["--smoke", "--steps=1"])
    assert report["gpu"] == "no GPU" and report["device"] == "CPU:0"
    rows = {row["model"]: row for row in report["train_steps"]}
    assert set(rows) == {"clmr", "pemr"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["views_per_s"] > 0 and row["peak_memory_gb"] > 0
        assert row["loss"] == row["loss"]  # not NaN
    assert report["augmentation"]["ran_on_device"] is False
    assert report["augmentation"]["views_per_s"] > 0
    assert report["input_pipeline"]["batch_shape"] == [2, 2, 59049]
    assert isinstance(report["input_bound"], bool)
