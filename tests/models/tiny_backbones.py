"""Tiny random transformers models of every architecture the backbone adapter knows, each saved as a local model
directory (config.json, model.safetensors, tokenizer.json) over a word-level tokenizer of the toy corpus: nothing is
downloaded. The encoders' tokenizer has BERT's tokens ([PAD] [UNK] [CLS] [SEP] [MASK]); the causal LMs' has only
GPT-2's <|endoftext|>, so the run must add [MASK] and [PAD] and grow the embeddings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tests.conftest import ADJS, NOUNS, VERBS

WORDS = ["the", "and", "."] + NOUNS + ADJS + VERBS
HAS_DIFFUSION_GEMMA = importlib.util.find_spec("transformers.models.diffusion_gemma") is not None  # transformers 5.x
ARCHITECTURES = ("llama", "qwen2", "gpt2", "bert", "modernbert") + (("diffusion_gemma",) if HAS_DIFFUSION_GEMMA else ())
ENCODERS = ("bert", "modernbert")


def word_tokenizer(specials: list[str], **roles):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(specials + ["[UNK_WORD]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK_WORD]"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


def tokenizer_for(arch: str):
    if arch in ENCODERS:
        return word_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pad_token="[PAD]", unk_token="[UNK]",
                              cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    if arch == "diffusion_gemma":
        return word_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], pad_token="<pad>", eos_token="<eos>",
                              bos_token="<bos>", unk_token="<unk>", mask_token="<mask>")
    return word_tokenizer(["<|endoftext|>"], eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def config_for(arch: str, vocab: int):
    import transformers as T

    small = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=64)
    if arch == "llama":
        return T.LlamaConfig(**small, num_key_value_heads=2, bos_token_id=0, eos_token_id=0)
    if arch == "qwen2":
        return T.Qwen2Config(**small, num_key_value_heads=1, bos_token_id=0, eos_token_id=0)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                            eos_token_id=0)
    if arch == "bert":
        return T.BertConfig(**small, pad_token_id=0)
    if arch == "modernbert":
        return T.ModernBertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                                  eos_token_id=3, sep_token_id=3, cls_token_id=2, global_attn_every_n_layers=1,
                                  local_attention=16)
    text = T.DiffusionGemmaTextConfig(**{**small, "num_attention_heads": 2}, num_key_value_heads=1, head_dim=16,
                                      global_head_dim=16, sliding_window=16, num_experts=2, top_k_experts=1,
                                      moe_intermediate_size=32, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                      layer_types=["sliding_attention", "full_attention"])
    vision = T.Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, head_dim=8, position_embedding_size=64)
    return T.DiffusionGemmaConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), canvas_length=8)


def model_class(arch: str):
    import transformers as T

    if arch in ENCODERS:
        return T.AutoModelForMaskedLM
    if arch == "diffusion_gemma":
        return T.DiffusionGemmaForBlockDiffusion
    return T.AutoModelForCausalLM


def save_backbone(arch: str, folder: Path, seed: int = 0) -> Path:
    """A random tiny `arch` model and its tokenizer saved in `folder` as a transformers model directory."""
    tok = tokenizer_for(arch)
    torch.manual_seed(seed)
    cfg = config_for(arch, len(tok))
    net = model_class(arch)._from_config(cfg) if arch == "diffusion_gemma" else model_class(arch).from_config(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


REMOTE_CONFIG = """from transformers import PretrainedConfig


class TinyDLMConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, vocab_size=32, hidden_size=16, **kw):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(**kw)
"""

REMOTE_MODEL = """import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tiny import TinyDLMConfig


class TinyDLM(PreTrainedModel):
    \"\"\"A stand-in for a hub-code masked diffusion LM (LLaDA's interface: ids in, .logits out), bidirectional.\"\"\"
    config_class = TinyDLMConfig

    def __init__(self, config):
        super().__init__(config)
        self.wte = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(config.hidden_size, config.hidden_size)])
        self.out = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids=None, **kw):
        h = self.wte(input_ids)
        h = h + self.layers[0](h.mean(dim=1, keepdim=True)).tanh()  # every position sees every position
        return MaskedLMOutput(logits=self.out(h))
"""


def save_remote_backbone(folder: Path) -> Path:
    """A model directory whose code lives in the directory itself (config.json auto_map), as LLaDA's and Dream's
    do on the hub: loading it runs that code, so it needs --trust-remote-code."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_tiny.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tiny.py").write_text(REMOTE_MODEL)
    tok = tokenizer_for("bert")
    tok.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llada", "vocab_size": len(tok), "hidden_size": 16, "architectures": ["TinyDLM"],
        "auto_map": {"AutoConfig": "configuration_tiny.TinyDLMConfig", "AutoModel": "modeling_tiny.TinyDLM"}}))
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    shapes = {"wte.weight": (len(tok), 16), "layers.0.weight": (16, 16), "layers.0.bias": (16,),
              "out.weight": (len(tok), 16), "out.bias": (len(tok),)}
    save_file({k: torch.randn(v, generator=g) * 0.1 for k, v in shapes.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder
