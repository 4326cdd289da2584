"""`vlm2 export` and `vlm2 bench backends | node-overhead | real-size` run end to end at toy
sizes and write what their interface contract names (speed itself is measured, not tested)."""
import json
import os

import pytest
import torch

from vlm2_ros.cli import main

pytest.importorskip("onnxruntime", reason="onnxruntime is installed by `make` (requirements.txt)")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert main(["export", "--preset", "tiny", "--out", str(out), "--check"]) == 0
    return out


def test_export_writes_the_graphs(export_dir, capsys):
    assert (export_dir / "export.json").is_file()
    assert {p.name for p in export_dir.glob("*.onnx")} == {"frame_encoders.onnx", "geometry_window.onnx",
                                                          "fusion.onnx"}


def test_bench_backends_reports_each_runtime_or_why_not(export_dir, tmp_path):
    out = tmp_path / "backends.json"
    assert main(["bench", "backends", "--runtimes", "torch-fp32,onnx-cpu,onnx-tensorrt", "--repeats", "2",
                 "--onnx-dir", str(export_dir), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for runtime in ("torch-fp32", "onnx-cpu"):
        assert result[f"ms_hot_path_{runtime}"] > 0 and result[f"speedup_{runtime}"] > 0
    assert "ms_hot_path_onnx-tensorrt" in result or "onnx-tensorrt" in result["skipped"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_bench_node_overhead_writes_the_ratio(tmp_path, monkeypatch):
    pytest.importorskip("rclpy", reason="the node needs rclpy (installed by `make`)")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(100 + os.getpid() % 50))
    out = tmp_path / "overhead.json"
    assert main(["bench", "node-overhead", "--frames", "8", "--rounds", "2", "--width", "128", "--height", "96",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["node_over_engine_fps_ratio"] > 0 and result["node_frames_ingested"] == 8
    assert result["node_frames_dropped"] == 0 and len(result["node_over_engine_fps_ratio_per_round"]) == 2


def test_bench_real_size_runs_the_real_code_path_at_toy_size(tmp_path):
    out = tmp_path / "real.json"
    assert main(["bench", "real-size", "--size", "tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "2",
                 "--workdir", str(tmp_path / "ckpt"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["preset"] == "qwen2.5-vl-3b-vggt" and result["ingest_fps"] > 0 and result["query_ms"] > 0
    assert 0 < result["geometry_fraction_of_measured_gemm_peak"] and result["geometry_gflop_per_frame"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_bench_real_size_on_cuda_says_when_there_is_none():
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["bench", "real-size", "--size", "3b", "--device", "cuda"])
