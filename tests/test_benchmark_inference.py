"""benchmarks.inference: each backend is compared with the torch-eager reference of the same
rounds, on windows/s and on process CPU seconds per window (workers faked: no timing)."""

import argparse

from benchmarks import inference


def test_each_backend_gets_speed_and_cpu_ratios_to_the_reference(monkeypatch):
    calls = []
    ours = {"tensorflow": (4.0, 0.1), "jax": (3.0, 0.125), "torch": (2.0, 0.25)}
    reference_rounds = iter([(1.0, 0.3), (3.0, 0.2)])  # medians: 2.0 windows/s, 0.25 s

    def fake_worker(flag, args, backend=None, engines=None):
        calls.append((flag, backend, engines))
        if flag == "--reference-worker":
            speed, cpu = next(reference_rounds)
            return {"windows_per_s": speed, "cpu_s_per_window": cpu}
        speed, cpu = ours[backend]
        row = {"keras": {"windows_per_s": speed, "cpu_s_per_window": cpu}}
        if engines == "keras,onnxruntime":
            row["onnxruntime"] = {"windows_per_s": 5.0, "cpu_s_per_window": 0.05}
        return row

    monkeypatch.setattr(inference, "_run_worker", fake_worker)
    args = argparse.Namespace(
        backends="tensorflow,jax,torch", rounds=2, skip_reference=False, onnxruntime=True, batches=1
    )
    report = inference.throughput_figures(args)

    # Round by round: every backend in its own worker, then the reference.
    assert [flag for flag, _, _ in calls] == (
        ["--throughput-worker"] * 3 + ["--reference-worker"]
    ) * 2
    assert [backend for _, backend, _ in calls[:3]] == ["tensorflow", "jax", "torch"]
    assert report["reference"]["torch_eager_windows_per_s"] == 2.0
    assert report["reference"]["cpu_s_per_window"] == 0.25
    backends = report["backends"]
    assert backends["tensorflow"]["ratio_keras_vs_torch_eager"] == 2.0
    assert backends["tensorflow"]["cpu_ratio_keras_vs_torch_eager"] == 2.5
    assert backends["tensorflow"]["cpu_ratio_onnxruntime_vs_torch_eager"] == 5.0
    assert backends["jax"]["ratio_keras_vs_torch_eager"] == 1.5
    assert backends["jax"]["cpu_ratio_keras_vs_torch_eager"] == 2.0
    assert backends["torch"]["cpu_ratio_keras_vs_torch_eager"] == 1.0
    assert "ratio_onnxruntime_vs_torch_eager" not in backends["torch"]


def test_a_failed_worker_is_reported_not_counted(monkeypatch):
    def fake_worker(flag, args, backend=None, engines=None):
        if backend == "jax":
            return {"error": "exit 1: out of memory"}
        if flag == "--reference-worker":
            return {"windows_per_s": 1.0, "cpu_s_per_window": 0.2}
        return {"keras": {"windows_per_s": 2.0, "cpu_s_per_window": 0.1}}

    monkeypatch.setattr(inference, "_run_worker", fake_worker)
    args = argparse.Namespace(
        backends="jax,torch", rounds=1, skip_reference=False, onnxruntime=False, batches=1
    )
    report = inference.throughput_figures(args)
    assert report["backends"]["jax"] == {"runs": [{"error": "exit 1: out of memory"}]}
    assert report["backends"]["torch"]["cpu_ratio_keras_vs_torch_eager"] == 2.0
