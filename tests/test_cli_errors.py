"""Every bad input: ONE line on stderr starting `textdiff: error:` that names the problem, exit code 2,
no traceback, and nothing already written is changed.

The table below is run in-process through `textdiff.cli.main` (with capsys); two cases also run as a real
subprocess to prove no traceback reaches the real stderr. Cases that need a trained run use the shared
`masked_run` / `ar_run` fixtures read-only, or a copy of them when they damage it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.conftest import ROOT, tiny_recipe_dict
from textdiff.cli import main


# --- helpers -------------------------------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, str]:
    """{path: sha256} of every file under the roots (a missing root is recorded as missing). The run directory's
    lock file is left out: its content is, by design, the pid of the last process that held it."""
    out = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.name == ".textdiff.lock":
                    continue
                if p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                else:
                    out[str(p)] = "dir"
        else:
            out[str(root)] = "missing"
    return out


def assert_one_line_error(rc: int, err: str, needles: tuple[str, ...]) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("textdiff: error:"), line
    assert rc == 2, (rc, line)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


class Ctx:
    """What a case builder gets: tmp_path, write_recipe, the corpus, and runs (copied when damaged)."""

    def __init__(self, request, tmp_path: Path, write_recipe, corpus: Path):
        self.request, self.tmp, self.write_recipe, self.corpus = request, tmp_path, write_recipe, corpus
        self.watched: list[Path] = [corpus]
        self.marker: Path | None = None

    def watch(self, path: Path) -> Path:
        self.watched.append(Path(path))
        return path

    def run(self, kind: str = "masked") -> Path:
        """The shared trained run, read-only (watched for changes)."""
        return self.watch(self.request.getfixturevalue(f"{kind}_run"))

    def run_copy(self, kind: str = "masked") -> Path:
        """A private copy of the trained run, to damage (watched after damaging)."""
        dst = self.tmp / f"copy-{kind}"
        shutil.copytree(self.run(kind), dst)
        return dst

    def fake_run(self, config: str | bytes) -> Path:
        """A directory whose only file is the given config.json."""
        run = self.tmp / "fake-run"
        run.mkdir()
        (run / "config.json").write_bytes(config.encode() if isinstance(config, str) else config)
        return self.watch(run)

    def data_file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return self.watch(path)

    def raw_recipe(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return self.watch(path)

    def train(self, *extra: str, **sections) -> list[str]:
        backend = sections.pop("backend", None)  # write_recipe's own `backend` argument is the back-end's name
        path = self.write_recipe(**sections)
        if backend is not None:
            raw = yaml.safe_load(path.read_text())
            raw["backend"].update(backend)
            path.write_text(yaml.safe_dump(raw))
        return ["train", str(path), "--no-samples", "--device", "cpu", *extra]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _config(run: Path, mutate: Callable[[dict], object]) -> Path:
    path = run / "config.json"
    cfg = json.loads(path.read_text())
    mutate(cfg)
    path.write_text(json.dumps(cfg))
    return run


def _other_shape_weights(run: Path) -> Path:
    """model.safetensors of a model with another width (n_embd 16 instead of 32)."""
    from safetensors.torch import save_file

    from textdiff.checkpoint import model_tensors
    from textdiff.config import recipe_from_dict
    from textdiff.models import build_model

    cfg = json.loads((run / "config.json").read_text())
    raw = cfg["recipe"]
    raw["model"]["n_embd"], raw["model"]["n_head"] = 16, 2
    model = build_model(recipe_from_dict(raw), cfg["vocab_size"], cfg["max_len"])
    save_file({k: v.contiguous() for k, v in model_tensors(model).items()}, str(run / "model.safetensors"))
    return run


def _drop_one_tensor(run: Path) -> Path:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "model.safetensors"))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(run / "model.safetensors"))
    return run


class Trap:
    """Unpickling this writes `marker` (the payload runs through builtins.exec)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",))


def _plant_pickle(ctx: Ctx, run: Path, name: str) -> Path:
    ctx.marker = ctx.tmp / "UNPICKLED_MARKER"
    (run / name).write_bytes(pickle.dumps(Trap(ctx.marker)))
    return run


def _last_checkpoint(run: Path) -> Path:
    from textdiff.checkpoint import list_checkpoints

    return list_checkpoints(run)[-1]


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _damage_checkpoint(name: str, data: Callable[[Path], bytes | str]) -> Callable[[Path], Path]:
    """Replace checkpoints/<newest>/<name> of a run by data(old path); returns the run."""
    def damage(run: Path) -> Path:
        path = _last_checkpoint(run) / name
        _write(path, data(path))
        return run
    return damage


def _optimizer_without_metadata(run: Path) -> Path:
    from safetensors.torch import load_file, save_file

    path = _last_checkpoint(run) / "trainer.safetensors"
    save_file(load_file(str(path)), str(path))
    return run


def _nan_weights(run: Path) -> Path:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "model.safetensors"))
    tensors[sorted(tensors)[0]].view(-1)[0] = float("nan")
    save_file(tensors, str(run / "model.safetensors"), metadata={"textdiff.backend": "masked"})
    return run


def _tokenizer_without_specials(ctx: "Ctx") -> Path:
    """A saved tokenizer directory whose vocabulary lacks [PAD] [MASK] [BOS] [EOS] [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "king": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = ctx.tmp / "tok-no-specials"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(out))
    return ctx.watch(out)


def _empty_vocab(run: Path) -> Path:
    path = run / "tokenizer.json"
    raw = json.loads(path.read_text())
    raw["model"]["vocab"], raw["added_tokens"] = {}, []
    path.write_text(json.dumps(raw))
    return run


def _swap_weights(ctx: "Ctx", run: Path, other: str) -> Path:
    shutil.copy(ctx.run(other) / "model.safetensors", run / "model.safetensors")
    return run


# --- the table -----------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], list[str]]
    needles: tuple[str, ...]


CASES = [
    # recipes: keys and types
    Case("unknown-top-level-key", lambda c: c.train(trian={"steps": 3}), ("unknown key 'trian'", "allowed keys")),
    Case("unknown-section-key", lambda c: c.train(train={"stpes": 3}), ("unknown key 'train.stpes'", "steps")),
    Case("string-for-float", lambda c: c.train(train={"lr": "fast"}), ("train.lr must be float", "'fast'")),
    Case("bool-for-int", lambda c: c.train(train={"steps": True}), ("train.steps must be int", "True")),
    Case("float-for-int", lambda c: c.train(model={"n_layer": 2.5}), ("model.n_layer must be int",)),
    Case("list-for-str", lambda c: c.train(backend={"name": ["masked"]}), ("backend.name must be str",)),
    Case("section-not-mapping", lambda c: c.train(train=[1, 2]), ("section 'train' must be a mapping",)),
    Case("betas-one-number", lambda c: c.train(train={"betas": [0.9]}), ("train.betas",)),
    Case("float-overflow", lambda c: c.train(train={"lr": 10 ** 400}), ("train.lr", "too large")),
    # recipes: values
    Case("negative-steps", lambda c: c.train(train={"steps": -1}), ("train.steps=-1", "> 0")),
    Case("zero-steps", lambda c: c.train(train={"steps": 0}), ("train.steps=0", "> 0")),
    Case("zero-lr", lambda c: c.train(train={"lr": 0.0}), ("train.lr=0.0", "> 0")),
    Case("negative-lr", lambda c: c.train(train={"lr": -1e-3}), ("train.lr=-0.001",)),
    Case("nan-temperature", lambda c: c.train(sample={"temperature": float("nan")}), ("sample.temperature=nan",)),
    Case("zero-max-length", lambda c: c.train(data={"max_length": 0}), ("data.max_length=0",)),
    Case("negative-max-length", lambda c: c.train(data={"max_length": -5}), ("data.max_length=-5",)),
    Case("unknown-backend", lambda c: c.train(backend={"name": "gaussian"}), ("backend.name='gaussian'", "masked")),
    Case("unknown-schedule", lambda c: c.train(backend={"schedule": "linear"}), ("backend.schedule", "loglinear")),
    Case("unknown-tokenizer-kind", lambda c: c.train(tokenizer={"kind": "chars"}), ("tokenizer.kind", "wordpiece")),
    Case("unknown-sampler", lambda c: c.train(sample={"sampler": "magic"}), ("sample.sampler='magic'", "ancestral")),
    Case("unknown-data-mode", lambda c: c.train(data={"mode": "stream"}), ("data.mode", "pack, pad")),
    Case("n-embd-not-divisible", lambda c: c.train(model={"n_embd": 30, "n_head": 4}),
         ("model.n_embd=30", "model.n_head=4")),
    Case("batch-not-divisible", lambda c: c.train(train={"batch_size": 8, "grad_accum": 3}),
         ("train.batch_size=8", "train.grad_accum=3")),
    Case("time-conditioning-with-count", lambda c: c.train(model={"time_conditioning": True},
                                                           backend={"mask_sampling": "count"}),
         ("backend.mask_sampling=count", "time_conditioning")),
    Case("recipe-infill-without-hole", lambda c: c.train(sample={"infill": "no hole here"}),
         ("sample.infill", "no hole")),
    # recipes: files
    Case("missing-data-section", lambda c: ["train", str(c.raw_recipe("r.yaml", yaml.safe_dump(
        {k: v for k, v in tiny_recipe_dict(c.corpus, c.tmp / "run-masked").items() if k != "data"})))],
        ("'data' section is required",)),
    Case("recipe-file-missing", lambda c: ["train", str(c.tmp / "nope.yaml")], ("nope.yaml", "recipe file not found")),
    Case("recipe-is-a-directory", lambda c: ["train", str(c.tmp)], ("recipe file not found",)),
    Case("invalid-yaml", lambda c: ["train", str(c.raw_recipe("r.yaml", "data: {path: [x\ntrain: ]\n"))],
         ("r.yaml", "invalid YAML")),
    Case("non-utf8-recipe", lambda c: ["train", str(c.raw_recipe("r.yaml", b"name: caf\xe9\ndata: {path: x.jsonl}\n"))],
         ("r.yaml", "not a UTF-8")),
    Case("recipe-is-a-list", lambda c: ["train", str(c.raw_recipe("r.yaml", "- data\n- train\n"))],
         ("must be a YAML mapping",)),
    Case("recipe-is-a-list-with-set", lambda c: ["train", str(c.raw_recipe("r.yaml", "- data\n")), "--set", "train.lr=1"],
         ("must be a YAML mapping",)),
    Case("yaml-date-with-set", lambda c: ["train", str(c.raw_recipe("r.yaml", f"name: 2024-01-01\ndata: {{path: {c.corpus}}}\n")),
                                          "--set", "train.lr=0.001"], ("name must be str",)),
    Case("yaml-huge-integer", lambda c: ["train", str(c.raw_recipe("r.yaml", f"data: {{path: {c.corpus}}}\n"
                                                                            f"train: {{steps: {'9' * 5000}}}\n"))],
         ("r.yaml", "invalid YAML")),
    # --set
    Case("set-without-equals", lambda c: c.train("--set", "train.lr"), ("--set 'train.lr'", "KEY=VALUE")),
    Case("set-unknown-key", lambda c: c.train("--set", "train.nope=1"), ("unknown key 'train.nope'",)),
    Case("set-unknown-section", lambda c: c.train("--set", "optim.lr=1"), ("unknown key 'optim'",)),
    Case("set-bad-yaml", lambda c: c.train("--set", "train.lr=[1"), ("--set 'train.lr=[1'", "not valid YAML")),
    Case("set-wrong-type", lambda c: c.train("--set", "train.steps=many"), ("train.steps must be int",)),
    Case("set-into-a-value", lambda c: c.train("--set", "train.lr.x=1"), ("'lr' is not a section",)),
    # data
    Case("missing-data-file", lambda c: c.train(data={"path": str(c.tmp / "absent.jsonl")}), ("absent.jsonl", "not found")),
    Case("unknown-data-extension", lambda c: c.train(data={"path": str(c.data_file("notes.md", "# hi\n"))}),
         ("notes.md", "unknown extension")),
    Case("empty-data-file", lambda c: c.train(data={"path": str(c.data_file("empty.jsonl", ""))}), ("empty.jsonl", "empty")),
    Case("binary-data-file", lambda c: c.train(data={"path": str(c.data_file("bin.jsonl", b'{"text": "a\x00b"}\n' * 5))}),
         ("bin.jsonl", "NUL")),
    Case("non-utf8-data-file", lambda c: c.train(data={"path": str(c.data_file(
        "latin1.jsonl", '{"text": "café au lait", "split": "train"}\n'.encode("latin-1") * 40))}),
        ("latin1.jsonl", "not UTF-8")),
    Case("non-utf8-at-end-of-txt", lambda c: c.train(data={"path": str(c.data_file("end.txt", b"hello\ncaf\xe9")),
                                                          "split_field": None}), ("end.txt", "not UTF-8")),
    Case("malformed-jsonl", lambda c: c.train(data={"path": str(c.data_file("bad.jsonl", '{"text": "a"}\nnot json\n'))}),
         ("bad.jsonl", "could not read")),
    Case("absent-text-field", lambda c: c.train(data={"text_field": "body"}), ("data.text_field", "'body'", "columns")),
    Case("absent-split-field", lambda c: c.train(data={"split_field": "part"}), ("data.split_field", "'part'")),
    Case("no-training-rows", lambda c: c.train(data={"path": str(c.data_file(
        "val.jsonl", _jsonl({"text": "the old king", "split": "validation"} for _ in range(30))))}),
        ("val.jsonl", "no training text")),
    Case("fewer-sequences-than-batch", lambda c: c.train(data={"path": str(c.data_file(
        "few.jsonl", _jsonl({"text": "the old king", "split": "train"} for _ in range(3))))}),
        ("train.batch_size=8",)),
    Case("too-long-in-pad-mode", lambda c: c.train(data={"mode": "pad", "truncate": False, "max_length": 4}),
         ("data.max_length=4", "data.truncate")),
    Case("tokenizer-dir-without-json", lambda c: c.train(tokenizer={"path": str(c.watch(c.tmp / "tokdir"))}),
         ("tokdir", "no tokenizer.json")),
    # training into existing run directories
    Case("existing-run-without-resume", lambda c: c.train(out_dir=str(c.run_copy())), ("already holds a run", "--resume")),
    Case("resume-with-changed-recipe", lambda c: c.train("--resume", out_dir=str(c.run_copy()), model={"n_layer": 3}),
         ("--resume", "model.n_layer")),
    Case("resume-missing-run", lambda c: c.train("--resume", out_dir=str(c.tmp / "never")), ("never", "not found")),
    Case("out-dir-is-a-file", lambda c: c.train(out_dir=str(c.data_file("a-file", "x"))), ("a-file", "not a directory")),
    Case("train-bad-device", lambda c: c.train("--device", "nosuchdevice"), ("--device 'nosuchdevice'",)),
    # CLI: argparse level
    Case("no-command", lambda c: [], ("command",)),
    Case("unknown-command", lambda c: ["fly"], ("invalid choice: 'fly'",)),
    Case("steps-zero", lambda c: ["sample", str(c.run()), "--steps", "0"], ("--steps", "must be > 0")),
    Case("top-p-not-a-number", lambda c: ["sample", str(c.run()), "--top-p", "abc"], ("--top-p", "'abc'")),
    Case("eval-unknown-split", lambda c: ["eval", str(c.run()), "--split", "dev"], ("--split", "'dev'")),
    # CLI: sampling options
    Case("top-p-too-large", lambda c: ["sample", str(c.run()), "--top-p", "1.5"], ("--top-p=1.5",)),
    Case("negative-top-k", lambda c: ["sample", str(c.run()), "--top-k", "-1"], ("--top-k=-1",)),
    Case("negative-temperature", lambda c: ["sample", str(c.run()), "--temperature", "-1"], ("--temperature=-1.0",)),
    Case("unknown-cli-sampler", lambda c: ["sample", str(c.run()), "--sampler", "magic"], ("--sampler='magic'", "ancestral")),
    Case("sample-n-zero", lambda c: ["sample", str(c.run()), "-n", "0"], ("n=0",)),
    Case("sample-too-long", lambda c: ["sample", str(c.run()), "--length", "100000"], ("100000", "more than this model")),
    Case("too-few-steps-for-blocks", lambda c: ["sample", str(c.run()), "--block-size", "4", "--steps", "2"],
         ("steps=2", "blocks")),
    Case("sample-bad-device", lambda c: ["sample", str(c.run()), "--device", "nosuchdevice"], ("--device 'nosuchdevice'",)),
    Case("ar-sampler-on-masked-run", lambda c: ["sample", str(c.run()), "--sampler", "ar"],
         ("sampler 'ar'", "masked back-end", "ancestral")),
    Case("confidence-sampler-on-ar-run", lambda c: ["sample", str(c.run("ar")), "--sampler", "confidence"],
         ("sampler 'confidence'", "ar back-end")),
    # CLI: infill
    Case("infill-no-hole", lambda c: ["infill", str(c.run()), "the old king"], ("has no hole", "[MASK]")),
    Case("infill-mask-zero", lambda c: ["infill", str(c.run()), "the [MASK:0] king"], ("[MASK:0]", "1 to 4096")),
    Case("infill-mask-x", lambda c: ["infill", str(c.run()), "the [MASK:x] king"], ("[MASK:x]", "whole number")),
    Case("infill-mask-superscript", lambda c: ["infill", str(c.run()), "the [MASK:²] king"], ("[MASK:²]", "whole number")),
    Case("infill-mask-unclosed", lambda c: ["infill", str(c.run()), "the [MASK] king [MASK:3"], ("malformed hole",)),
    Case("infill-hole-too-long", lambda c: ["infill", str(c.run()), "the [MASK:4000] king"], ("more than this model",)),
    Case("infill-steps-over-holes", lambda c: ["infill", str(c.run()), "the [MASK:2] king", "--sampler", "confidence",
                                               "--steps", "5"], ("steps=5", "2 tokens", "--steps 2")),
    Case("infill-n-zero", lambda c: ["infill", str(c.run()), "the [MASK] king", "-n", "0"], ("n=0",)),
    Case("ar-infill-middle-hole", lambda c: ["infill", str(c.run("ar")), "the [MASK] king sees the river"],
         ("sampler 'ar'", "prefix")),
    # CLI: eval
    Case("eval-unknown-metric", lambda c: ["eval", str(c.run()), "--metrics", "ppl,meteor"], ("meteor", "available: ppl")),
    Case("eval-bleu-on-an-unconditional-run", lambda c: ["eval", str(c.run()), "--metrics", "ppl,bleu"],
         ("bleu", "not seq2seq", "source_field")),
    Case("eval-zero-threads", lambda c: ["eval", str(c.run()), "--threads", "0"], ("--threads",)),
    Case("eval-negative-max-sequences", lambda c: ["eval", str(c.run()), "--max-sequences", "-1"], ("--max-sequences -1",)),
    Case("eval-out-folder-missing", lambda c: ["eval", str(c.run()), "--out", str(c.tmp / "no" / "r.json")], ("--out",)),
    Case("eval-out-is-a-directory", lambda c: ["eval", str(c.run()), "--out", str(c.watch(c.tmp))], ("--out",)),
    # run directories and checkpoints
    Case("run-dir-missing", lambda c: ["sample", str(c.tmp / "no-run")], ("no-run", "run directory not found")),
    Case("dir-without-config", lambda c: ["sample", str(c.watch(c.tmp))], ("no config.json",)),
    Case("config-not-json", lambda c: ["sample", str(c.fake_run("{not json"))], ("config.json", "not valid JSON")),
    Case("config-wrong-type", lambda c: ["infill", str(_config(c.run_copy(), lambda d: d.update(type="transformers"))),
                                         "the [MASK] king"], ("config.json", "not a textdiff config")),
    Case("config-is-a-list", lambda c: ["sample", str(c.fake_run("[1, 2]"))], ("not a textdiff config",)),
    Case("config-not-utf8", lambda c: ["sample", str(c.fake_run(b"\xff\xfe{"))], ("config.json", "not valid JSON")),
    Case("config-without-max-len", lambda c: ["sample", str(_config(c.run_copy(), lambda d: d.pop("max_len")))],
         ("'max_len'", "positive integer")),
    Case("config-bad-recipe", lambda c: ["sample", str(_config(c.run_copy(), lambda d: d["recipe"]["train"].update(lr="x")))],
         ("config.json", "train.lr must be float")),
    Case("config-wrong-vocab", lambda c: ["sample", str(_config(c.run_copy(), lambda d: d.update(vocab_size=999)))],
         ("tokenizer has", "999")),
    Case("weights-missing", lambda c: ["sample", str(_unlink(c.run_copy(), "model.safetensors"))],
         ("no model.safetensors",)),
    Case("weights-truncated", lambda c: ["sample", str(_truncate(c.run_copy(), "model.safetensors"))],
         ("model.safetensors", "not a readable safetensors")),
    Case("weights-other-shape", lambda c: ["eval", str(_other_shape_weights(c.run_copy()))],
         ("model.safetensors", "shape mismatch")),
    Case("weights-missing-tensor", lambda c: ["sample", str(_drop_one_tensor(c.run_copy()))], ("do not fit", "missing")),
    Case("planted-pytorch-model-bin", lambda c: ["sample", str(_plant_pickle(c, c.run_copy(), "pytorch_model.bin"))],
         ("pytorch_model.bin", "pickle")),
    Case("pickle-named-safetensors", lambda c: ["infill", str(_plant_pickle(c, c.run_copy(), "model.safetensors")),
                                                "the [MASK] king"], ("model.safetensors", "not a readable safetensors")),
    Case("planted-pickle-on-resume", lambda c: c.train("--resume", out_dir=str(_plant_pickle(c, c.run_copy(), "optimizer.pt"))),
         ("optimizer.pt", "pickle")),
    # --- more data files
    Case("data-path-is-a-directory", lambda c: c.train(data={"path": str(c.watch(_mkdir(c.tmp / "corpus.jsonl")))}),
         ("corpus.jsonl", "is a directory")),
    Case("utf16-data-file", lambda c: c.train(data={"path": str(c.data_file(
        "u16.jsonl", '{"text": "the king", "split": "train"}\n'.encode("utf-16") * 40))}), ("u16.jsonl", "NUL")),
    Case("garbage-parquet", lambda c: c.train(data={"path": str(c.data_file("g.parquet", b"not a parquet file"))}),
         ("g.parquet", "could not read")),
    Case("text-field-not-strings", lambda c: c.train(data={"path": str(c.data_file(
        "nums.jsonl", _jsonl({"text": i, "split": "train"} for i in range(40))))}), ("nums.jsonl", "no training text")),
    Case("csv-without-text-column", lambda c: c.train(data={"path": str(c.data_file("c.csv", "body,split\nhi,train\n")),
                                                           "text_field": "text"}), ("data.text_field", "body")),
    Case("json-array-of-numbers", lambda c: c.train(data={"path": str(c.data_file("a.json", "[1, 2, 3]"))}),
         ("a.json",)),
    Case("empty-data-path", lambda c: c.train(data={"path": ""}), ("data.path is required",)),
    Case("zero-max-examples", lambda c: c.train(data={"max_examples": 0}), ("data.max_examples=0",)),
    Case("too-long-wordpiece-pad", lambda c: c.train(data={"mode": "pad", "truncate": False, "max_length": 6},
                                                     tokenizer={"kind": "wordpiece"}), ("data.max_length=6", "truncate")),
    # --- tokenizers
    Case("tokenizer-without-special-tokens", lambda c: c.train(tokenizer={"path": str(_tokenizer_without_specials(c))}),
         ("special tokens", "[MASK]", "are missing")),
    Case("run-tokenizer-missing", lambda c: ["sample", str(_unlink(c.run_copy(), "tokenizer.json"))], ("no tokenizer.json",)),
    Case("run-tokenizer-empty-vocab", lambda c: ["sample", str(_empty_vocab(c.run_copy()))], ("tokenizer has",)),
    Case("tiny-tokenizer-vocab", lambda c: c.train(tokenizer={"vocab_size": 8}), ("tokenizer.vocab_size=8", ">= 16")),
    # --- more CLI
    Case("sample-steps-over-length", lambda c: ["sample", str(c.run()), "--sampler", "confidence", "--length", "4",
                                                "--steps", "10"], ("steps=10", "4 tokens", "--steps 4")),
    Case("sample-n-negative", lambda c: ["sample", str(c.run()), "-n", "-3"], ("n=-3",)),
    Case("sample-threshold-out-of-range", lambda c: ["sample", str(c.run()), "--threshold", "1.5"], ("--threshold=1.5",)),
    Case("sample-threshold-needs-confidence", lambda c: ["sample", str(c.run()), "--sampler", "ancestral",
                                                         "--threshold", "0.9"], ("threshold=0.9", "confidence")),
    Case("sample-joint-edits-on-a-masked-run", lambda c: ["sample", str(c.run()), "--joint-edits"],
         ("joint edits", "edit back-end")),
    Case("infill-empty-template", lambda c: ["infill", str(c.run()), ""], ("has no hole",)),
    Case("infill-mask-negative", lambda c: ["infill", str(c.run()), "the [MASK:-2] king"], ("[MASK:-2]", "whole number")),
    Case("infill-mask-huge", lambda c: ["infill", str(c.run()), "the [MASK:" + "9" * 30 + "] king"], ("1 to 4096",)),
    Case("ar-infill-leading-hole", lambda c: ["infill", str(c.run("ar")), "[MASK:2] the king"], ("only continue a prefix",)),
    Case("negative-block-size", lambda c: ["sample", str(c.run()), "--block-size", "-1"], ("--block-size=-1",)),
    Case("nan-temperature-cli", lambda c: ["sample", str(c.run()), "--temperature", "nan"], ("--temperature=nan",)),
    Case("seed-too-large", lambda c: ["sample", str(c.run()), "--seed", "9" * 30], ("--seed", "2**63")),
    Case("seed-negative", lambda c: ["infill", str(c.run()), "the [MASK] king", "--seed", "-1"], ("--seed", "2**63")),
    Case("eval-seed-not-a-number", lambda c: ["eval", str(c.run()), "--seed", "abc"], ("--seed", "'abc'")),
    Case("recipe-seed-too-large", lambda c: c.train(train={"seed": 2 ** 40}), ("train.seed", "2**32")),
    Case("eval-data-file-gone", lambda c: ["eval", str(_config(c.run_copy(), lambda d: d["recipe"]["data"].update(
        path=str(c.tmp / "moved.jsonl"))))], ("moved.jsonl", "not found")),
    # --- run directories from another back-end
    Case("resume-run-of-another-backend", lambda c: c.train("--resume", out_dir=str(c.run_copy("ar"))),
         ("--resume", "backend.name")),
    Case("config-backend-not-registered", lambda c: ["sample", str(_config(c.run_copy(), lambda d: d["recipe"]["backend"]
                                                                          .update(name="gaussian")))],
         ("backend.name='gaussian'", "masked")),
    Case("config-backend-key-disagrees", lambda c: ["sample", str(_config(c.run_copy(), lambda d: d.update(backend="ar")))],
         ("\"backend\": 'ar'", "masked")),
    Case("ar-weights-under-masked-config", lambda c: ["sample", str(_swap_weights(c, c.run_copy(), "ar"))],
         ("trained with the ar back-end", "config.json says masked")),
    Case("masked-weights-under-ar-config", lambda c: ["infill", str(_swap_weights(c, c.run_copy("ar"), "masked")),
                                                      "the king [MASK]"], ("trained with the masked back-end",)),
    # --- more damaged checkpoints
    Case("config-json-is-a-directory", lambda c: ["sample", str(_mkdir(_unlink(c.run_copy(), "config.json") / "config.json")
                                                                .parent)], ("no config.json",)),
    Case("weights-empty-file", lambda c: ["sample", str(_damage(c.run_copy(), "model.safetensors", b""))],
         ("not a readable safetensors", "header too small")),
    Case("weights-header-too-large", lambda c: ["sample", str(_damage(c.run_copy(), "model.safetensors",
                                                                      (2 ** 60).to_bytes(8, "little") + b"{}"))],
         ("not a readable safetensors",)),
    Case("weights-with-nan", lambda c: ["sample", str(_nan_weights(c.run_copy()))], ("NaN or inf",)),
    Case("resume-truncated-checkpoint", lambda c: c.train("--resume", out_dir=str(_damage_checkpoint(
        "model.safetensors", lambda p: p.read_bytes()[:100])(c.run_copy()))), ("model.safetensors", "not a readable")),
    Case("resume-corrupt-state-json", lambda c: c.train("--resume", out_dir=str(_damage_checkpoint(
        "state.json", lambda p: "{oops")(c.run_copy()))), ("state.json", "not readable JSON")),
    Case("resume-state-without-step", lambda c: c.train("--resume", out_dir=str(_damage_checkpoint(
        "state.json", lambda p: '{"seed": 0}')(c.run_copy()))), ("state.json", "'step'")),
    Case("resume-optimizer-missing", lambda c: c.train("--resume", out_dir=str(_unlink(
        _last_checkpoint(c.run_copy()), "trainer.safetensors").parents[1])), ("trainer.safetensors", "not found")),
    Case("resume-optimizer-without-metadata", lambda c: c.train("--resume", out_dir=str(_optimizer_without_metadata(
        c.run_copy()))), ("trainer.safetensors", "not an optimizer state")),
    Case("resume-model-file-as-optimizer", lambda c: c.train("--resume", out_dir=str(_damage_checkpoint(
        "trainer.safetensors", lambda p: (p.parent / "model.safetensors").read_bytes())(c.run_copy()))),
        ("trainer.safetensors", "not an optimizer state")),
    Case("resume-checkpoint-other-shape", lambda c: c.train("--resume", out_dir=str(_ckpt_other_shape(c.run_copy()))),
         ("shape mismatch",)),
    Case("planted-pickle-in-checkpoint", lambda c: c.train("--resume", out_dir=str(_plant_pickle(
        c, _last_checkpoint(c.run_copy()), "optimizer.pt").parents[1])), ("optimizer.pt", "pickle")),
    Case("planted-pt-file", lambda c: ["eval", str(_plant_pickle(c, c.run_copy(), "weights.pt"))], ("weights.pt", "pickle")),
]


# --- issue 31, second round: sizes, structure, values, output paths, foreign artefacts, writers ---------------------

DEEP = "[" * 5000 + "]" * 5000


def _tiny_recipe_text(c: Ctx, **top) -> dict:
    raw = tiny_recipe_dict(c.corpus, c.tmp / "run-masked")
    raw.update(top)
    return raw


def _yaml_with(c: Ctx, name: str, extra: str) -> list[str]:
    """A tiny recipe file with `extra` YAML appended (a duplicate section, an alias, deep nesting)."""
    text = yaml.safe_dump(tiny_recipe_dict(c.corpus, c.tmp / "run-masked")) + extra
    return ["train", str(c.raw_recipe(name, text)), "--no-samples"]


def _retype_weights(run: Path, dtype: str) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "model.safetensors"))
    save_file({k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}, str(run / "model.safetensors"),
              metadata={"textdiff.backend": "masked"})
    return run


def _deep_state(run: Path) -> Path:
    (_last_checkpoint(run) / "state.json").write_text(DEEP)
    return run


def _fake_classifier(c: Ctx, **info) -> Path:
    """A classifier directory whose classifier.json holds `info` (an absurd size, or another run's vocabulary)."""
    from textdiff.classifier import Classifier, LabelSpec, NoisyClassifier
    from textdiff.config import ModelConfig

    cfg = json.loads((c.run() / "config.json").read_text())
    sizes = {"vocab_size": cfg["vocab_size"] + 7, "max_len": cfg["max_len"], "in_dim": 0, **info}
    out = c.tmp / "classifier"
    net = NoisyClassifier(ModelConfig(n_layer=1, n_embd=32, n_head=1), min(sizes["vocab_size"], 100), sizes["max_len"], 2)
    Classifier(net, ["a", "b"], LabelSpec.parse("split"), sizes).save(out)
    return c.watch(out)


def _locked(c: Ctx, run: Path) -> Path:
    """Hold the run directory's lock from this (test) process, as a second writer would find it."""
    import fcntl

    fd = os.open(run / ".textdiff.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"424242\n")
    c.request.addfinalizer(lambda: os.close(fd))
    return c.watch(run)


def _pickle_judge(c: Ctx) -> Path:
    judge = c.tmp / "judge"
    judge.mkdir()
    (judge / "config.json").write_text('{"model_type": "gpt2"}')
    _plant_pickle(c, judge, "pytorch_model.bin")
    return c.watch(judge)


CASES += [
    # sizes and counts: refused against a limit (or the machine's memory) before anything is allocated
    Case("huge-n-embd", lambda c: c.train(model={"n_embd": 4_000_000, "n_head": 2}), ("model.n_embd", "limit")),
    Case("model-larger-than-memory", lambda c: c.train(model={"n_embd": 60_000, "n_head": 2, "n_layer": 20}),
         ("parameters", "GiB", "available")),
    Case("huge-train-threads", lambda c: c.train(train={"threads": 10 ** 20}), ("train.threads", "limit")),
    Case("huge-vocab", lambda c: c.train(tokenizer={"vocab_size": 10 ** 20}), ("tokenizer.vocab_size", "limit")),
    Case("huge-train-steps", lambda c: c.train(train={"steps": 10 ** 13}), ("train.steps", "limit")),
    Case("sample-n-huge", lambda c: ["sample", str(c.run()), "-n", "100000000000"], ("-n", "limit")),
    Case("sample-steps-huge", lambda c: ["sample", str(c.run()), "--steps", "10000000000000"], ("--steps", "limit")),
    Case("eval-draws-huge", lambda c: ["eval", str(c.run()), "--draws", "1000000000000"], ("--draws", "limit")),
    Case("eval-mbr-huge", lambda c: ["eval", str(c.run()), "--mbr", "1000000000"], ("--mbr", "limit")),
    Case("frontier-steps-huge", lambda c: ["bench", "frontier", str(c.run()), "--steps", "4,100000000000000",
                                           "--judge", "none", "--out-dir", str(c.tmp / "fr")], ("--steps", "limit")),
    Case("bench-threads-huge", lambda c: ["bench", "throughput", "--threads", str(10 ** 20)], ("--threads", "limit")),
    Case("config-huge-vocab", lambda c: ["sample", str(c.watch(_config(c.run_copy(), lambda d: d.update(
        vocab_size=10 ** 12))))], ("'vocab_size'", "limit")),
    Case("config-huge-model", lambda c: ["sample", str(c.watch(_config(c.run_copy(), lambda d: d["recipe"]["model"].update(
        n_embd=4_000_000, n_head=2))))], ("model.n_embd", "limit")),
    Case("classifier-json-huge-vocab", lambda c: ["sample", str(c.run()), "--classifier", str(_fake_classifier(
        c, vocab_size=10 ** 12)), "--target", "a"], ("classifier.json", "vocab_size")),
    # pathological structure
    Case("recipe-duplicate-section", lambda c: _yaml_with(c, "dup.yaml", "train: {lr: 0.001}\n"),
         ("duplicate key 'train'", "line")),
    Case("recipe-anchor-bomb", lambda c: _yaml_with(c, "bomb.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\n"
                                                    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                                    "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"), ("alias",)),
    Case("recipe-deeply-nested", lambda c: _yaml_with(c, "deep.yaml", f"extra: {DEEP}\n"), ("nested more than",)),
    Case("set-deeply-nested", lambda c: c.train("--set", f"train.lr={DEEP}"), ("--set", "nested more than")),
    Case("config-deeply-nested", lambda c: ["sample", str(c.fake_run(DEEP))], ("config.json", "nested too deeply")),
    Case("resume-state-deeply-nested", lambda c: c.train("--resume", out_dir=str(c.watch(_deep_state(c.run_copy())))),
         ("state.json", "not readable JSON")),
    Case("argument-not-utf8", lambda c: ["sample", str(c.run()), "--sampler", "\udcff"], ("not valid UTF-8",)),
    Case("infill-literal-eos", lambda c: ["infill", str(c.run()), "the [MASK] king [EOS] said"], ("[EOS]", "special token")),
    Case("infill-literal-pad", lambda c: ["infill", str(c.run()), "[PAD] the [MASK] king"], ("[PAD]", "special token")),
    # values that pass a type check but cannot work
    Case("classifier-scale-nan", lambda c: ["sample", str(c.run()), "--classifier-scale", "nan"],
         ("--classifier-scale nan", "finite")),
    Case("eval-classifier-scale-inf", lambda c: ["eval", str(c.run()), "--classifier-scale", "0,inf"],
         ("--classifier-scale", "finite")),
    Case("device-meta", lambda c: ["sample", str(c.run()), "--device", "meta"], ("--device 'meta'",)),
    Case("train-device-meta", lambda c: c.train("--device", "meta"), ("--device 'meta'",)),
    Case("lr-infinite", lambda c: c.train("--set", "train.lr=.inf"), ("train.lr=inf", "finite")),
    Case("empty-name-without-out-dir", lambda c: ["train", str(c.raw_recipe("r.yaml", yaml.safe_dump(
        {k: v for k, v in _tiny_recipe_text(c, name="").items() if k != "out_dir"}))), "--no-samples"],
        ("name is empty", "out_dir")),
    Case("recipe-sample-length-over-model", lambda c: c.train(sample={"length": 100_000}),
         ("sample.length=100000", "more than this model")),
    # output paths checked before the work
    Case("out-dir-under-a-file", lambda c: c.train(out_dir=str(c.data_file("plain", "x") / "run")),
         ("out_dir", "cannot be written")),
    Case("out-dir-under-proc", lambda c: c.train(out_dir="/proc/textdiff-run"), ("out_dir", "cannot be written")),
    Case("eval-out-unwritable", lambda c: ["eval", str(c.run()), "--out", "/proc/self/result.json"],
         ("--out", "cannot be written")),
    Case("frontier-out-dir-under-a-file", lambda c: ["bench", "frontier", str(c.run()), "--out-dir",
                                                     str(c.data_file("plain2", "x") / "f")], ("--out-dir",)),
    # foreign or damaged artefacts
    Case("weights-int64", lambda c: ["sample", str(c.watch(_retype_weights(c.run_copy(), "int64")))],
         ("is int64", "float32")),
    Case("weights-float16", lambda c: ["sample", str(c.watch(_retype_weights(c.run_copy(), "float16")))],
         ("is float16",)),
    Case("classifier-of-another-vocabulary", lambda c: ["sample", str(c.run()), "--classifier",
                                                        str(_fake_classifier(c)), "--target", "a"],
         ("--classifier", "vocabulary")),
    Case("frontier-json-malformed", lambda c: ["bench", "judge", str(c.data_file("frontier.json",
                                                                                 '{"points": [1], "references": {}}'))],
         ("not a frontier.json",)),
    Case("frontier-json-a-list", lambda c: ["bench", "judge", str(c.data_file("frontier.json", "[1, 2]"))],
         ("not a frontier.json",)),
    Case("judge-dir-with-only-a-pickle", lambda c: ["eval", str(c.run()), "--metrics", "genppl", "--num-samples", "1",
                                                    "--no-reference", "--judge", str(_pickle_judge(c))],
         ("--judge", "safetensors")),
    Case("streaming-malformed-jsonl", lambda c: c.train(data={"streaming": True, "path": str(c.data_file(
        "bad-stream.jsonl", _jsonl({"text": "the old king", "split": "train"} for _ in range(5)) + "not json\n"))}),
        ("bad-stream.jsonl", "could not read")),
    # a failing command changes nothing; one writer per run directory
    Case("resume-failing-keeps-config", lambda c: c.train("--resume", out_dir=str(c.watch(_damage_checkpoint(
        "model.safetensors", lambda p: p.read_bytes()[:100])(c.run_copy()))), train={"steps": 99}),
        ("model.safetensors", "not a readable")),
    Case("resume-data-changed", lambda c: c.train("--resume", out_dir=str(c.watch(_config(c.run_copy(), lambda d: d[
        "data_fingerprint"].update(sha256="0" * 64))))), ("--resume", "not the data")),
    Case("sentencepiece-at-its-minimum-vocab", lambda c: c.train(tokenizer={"kind": "sentencepiece", "vocab_size": 16}),
         ("tokenizer.vocab_size=16", "sentencepiece")),
    Case("data-path-a-bare-directory-name", lambda c: c.train(data={"path": (_mkdir(c.tmp / "corpusdir"), "corpusdir")[1]}),
         ("data.path: corpusdir is a directory",)),
    Case("run-dir-locked", lambda c: c.train("--resume", out_dir=str(_locked(c, c.run_copy()))),
         ("being written by another textdiff process", "pid 424242")),
]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _damage(run: Path, name: str, data: bytes) -> Path:
    (run / name).write_bytes(data)
    return run


def _ckpt_other_shape(run: Path) -> Path:
    """The newest checkpoint's model.safetensors replaced by the run's other-shape weights."""
    shutil.copy(_other_shape_weights(run) / "model.safetensors", _last_checkpoint(run) / "model.safetensors")
    return run


def _unlink(run: Path, name: str) -> Path:
    (run / name).unlink()
    return run


def _truncate(run: Path, name: str) -> Path:
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) // 2])
    return run


def test_table_is_large_and_distinct():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, request, tmp_path, write_recipe, corpus, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(request, tmp_path, write_recipe, corpus)
    argv = [str(a) for a in case.build(ctx)]
    before = snapshot(*ctx.watched)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert_one_line_error(rc, err, case.needles)
    assert snapshot(*ctx.watched) == before, "an existing file was changed"
    assert not (tmp_path / "run-masked").exists(), "a failed train created its run directory"
    if ctx.marker is not None:
        assert not ctx.marker.exists(), "a planted pickle was unpickled"


def test_pickle_trap_is_live(tmp_path):
    """The planted payload really would write its marker when unpickled, so its absence above means something."""
    marker = tmp_path / "live"
    pickle.loads(pickle.dumps(Trap(marker)))
    assert marker.read_text() == "unpickled"


@pytest.mark.parametrize("content", ["garbage", "{}"], ids=["not-json", "empty-object"])
def test_corrupt_tokenizer_json(content, masked_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(masked_run, run)
    (run / "tokenizer.json").write_text(content)
    rc = main(["sample", str(run)])
    assert_one_line_error(rc, capsys.readouterr().err, ("tokenizer.json",))


# --- the real process ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, needles", [
    (["train", "missing-recipe.yaml"], ("missing-recipe.yaml", "recipe file not found")),
    (["infill", "no-such-run", "the [MASK:0] king", "--steps", "0"], ("--steps", "must be > 0")),
], ids=["missing-recipe", "argparse-steps-zero"])
def test_subprocess_has_no_traceback(argv, needles, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "textdiff", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, needles)
    assert proc.stdout == ""


def test_every_flag_of_every_command_has_a_help_line():
    """`textdiff X --help` explains every option (subcommands included); sampling flags come from the samplers'
    declared options, each naming the samplers that take it."""
    import argparse

    from textdiff.cli import build_parser

    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{where} {name}")
            elif not isinstance(action, argparse._HelpAction):
                yield where, action

    missing = [f"{where} {'/'.join(a.option_strings) or a.dest}" for where, a in walk(build_parser(), "textdiff")
               if not a.help]
    assert not missing, missing
    flags = {s for _, a in walk(build_parser(), "textdiff") for s in a.option_strings}
    assert {"--eta", "--clamp", "--threshold", "--joint-edits", "--block-size"} <= flags
