"""benchmarks/gpu.py on a CPU-only machine: the FLOPs / MFU arithmetic, the peak table, the one-line refusal, and
the timed functions run once on a tiny model (CUDA synchronisation stubbed out)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu)


def test_flops_per_token_is_6n_plus_the_attention_term():
    # 12 x 768, sequence 1024: 6 N + 12 * 12 * 768 * 1024
    assert gpu.flops_per_token(124_000_000, 12, 768, 1024) == 6 * 124e6 + 12 * 12 * 768 * 1024
    # 100k tokens/s of that model on a 989 TFLOP/s card
    util = gpu.mfu(1e5, gpu.flops_per_token(124_000_000, 12, 768, 1024), 989.0)
    assert util == pytest.approx(1e5 * (744e6 + 113_246_208) / 989e12)
    assert gpu.mfu(1e5, 1e9, None) is None


def test_peak_table_matches_the_specific_card_first():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_tflops("NVIDIA A10G") == 70.0
    assert gpu.peak_tflops("Some Future Card") is None


def test_without_a_gpu_it_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA GPU found" in out


def test_the_timed_steps_run_on_a_tiny_model(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    args = gpu.parse(["--layers", "1", "--width", "32", "--heads", "2", "--length", "16", "--batch", "2",
                      "--vocab", "64", "--warmup", "1", "--iters", "1", "--sample-steps", "4", "--block-size", "4"])
    rows = []
    for label, name, K in gpu.models(args):
        model, backend = gpu.build(name, args, torch.device("cpu"), K)
        assert gpu.matmul_params(model) == model.num_params()  # rotary: no position table
        tok_s = gpu.train_rate(model, backend, args, "cpu")
        sample, how = gpu.sampling(model, name, K, args, "cpu")
        assert tok_s > 0 and sample > 0
        rows.append((label, model.num_params(), tok_s, 1.0, 0.5, sample, how))
    text = gpu.table("NVIDIA H100 80GB HBM3", 989.0, args, rows)
    assert "| masked |" in text and "| ar |" in text and "| block-masked (K=4) |" in text and "50.0%" in text
