"""LoRA (Hu et al. 2021) on a backbone through peft: `model.lora: {r, alpha, dropout, target_modules}`.

The adapters are injected in place (peft's `inject_adapter_in_model`), so the backbone keeps its own class and the
denoiser reads it as before; every backbone weight is frozen but the LoRA matrices, the input-side modules and
`NewTokens` (the embeddings of the tokens the run added: [MASK], [PAD]). The run directory's model.safetensors holds
the whole model (base and adapters: it loads on its own); `adapter_tensors` and `merged_tensors` give the adapter
alone or the weights with the adapters merged in; `export` saves either as safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from textdiff.errors import TextdiffError

DEFAULT_TARGETS = {"gpt2": ["c_attn", "c_proj"], "bert": ["query", "key", "value"], "roberta": ["query", "key", "value"],
                   "modernbert": ["Wqkv", "Wo"], "distilbert": ["q_lin", "k_lin", "v_lin"]}
"""LoRA's default target modules per architecture (others: the attention projections q/k/v/o_proj)."""
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def targets(model_type: str, section: dict) -> list[str]:
    return list(section.get("target_modules") or DEFAULT_TARGETS.get(model_type, ATTENTION))


def linear_names(net: nn.Module) -> list[str]:
    """The last name part of every linear (or GPT-2 Conv1D) module: what target_modules may name."""
    names = {n.rsplit(".", 1)[-1] for n, m in net.named_modules()
             if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"}
    return sorted(names)


def check_targets(net: nn.Module, section: dict, spec: str) -> None:
    """LoRA target modules that the backbone `net` (built on the meta device) does not have are refused before
    anything is written."""
    have = linear_names(net)
    missing = [t for t in targets(net.config.model_type, section) if t not in have]
    if missing:
        raise TextdiffError(f"model.lora.target_modules: {', '.join(missing)} not in {spec!r}; its linear modules: "
                            f"{', '.join(have)}")


def peft_module():
    try:
        import peft
    except ImportError:
        raise TextdiffError("model.lora needs peft: pip install 'textdiff[peft]'") from None
    return peft


def apply_lora(net: nn.Module, kind: str, section: dict, spec: str) -> nn.Module:
    """LoRA adapters injected into `net` in place; every other backbone weight frozen."""
    peft = peft_module()
    config = peft.LoraConfig(r=section.get("r", 8), lora_alpha=section.get("alpha", 16),
                             lora_dropout=section.get("dropout", 0.0),
                             target_modules=targets(net.config.model_type, section),
                             fan_in_fan_out=net.config.model_type == "gpt2")
    for p in net.parameters():
        p.requires_grad_(False)
    try:
        net = peft.inject_adapter_in_model(config, net)
    except ValueError as e:
        raise TextdiffError(f"model.lora: {str(e).splitlines()[0][:160]} ({spec!r})") from None
    return net


class NewTokens(nn.Module):
    """Trainable input embeddings of the tokens a run added to a frozen backbone ([MASK], [PAD]), as a delta on
    the resized table: ids >= first get delta[id - first] added, others nothing."""

    def __init__(self, first: int, count: int, dim: int):
        super().__init__()
        self.first = first
        self.delta = nn.Parameter(torch.zeros(count, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> (B, L, D)."""
        new = ids >= self.first
        out = torch.zeros(*ids.shape, self.delta.shape[1], dtype=self.delta.dtype, device=ids.device)
        if new.any():
            out[new] = self.delta[ids[new] - self.first]
        return out


def is_lora(name: str) -> bool:
    return "lora_" in name


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of a LoRA run (adapters, input-side modules, new-token embeddings)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def merged_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with every LoRA adapter merged into its base layer, under the backbone's own names (a
    copy: the model is left unmerged)."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
            out[f"{name}.weight"] = module.base_layer.weight.detach() + delta
    for name, t in model.state_dict().items():
        if is_lora(name):
            continue
        plain = name.replace(".base_layer.", ".")
        out.setdefault(plain, t.detach())
    return out


def export(model: nn.Module, out: str | Path, merged: bool) -> Path:
    """A LoRA model's adapter (its trainable tensors, textdiff's names) or its merged weights (the backbone's own
    state dict, loadable by transformers: `AutoModelForCausalLM.from_pretrained(dir)` beside its config.json) as one
    safetensors file, e.g. `export(TextDiffusionPipeline.from_pretrained(run).model, "adapter.safetensors", False)`."""
    from textdiff import checkpoint as ckpt

    if not any(is_lora(n) for n, _ in model.named_parameters()):
        raise TextdiffError("not a LoRA model (its recipe has no model.lora)")
    if merged:
        tensors = {k[len("net."):]: v for k, v in merged_tensors(model).items() if k.startswith("net.")}
    else:
        tensors = adapter_tensors(model)
    seen, unique = set(), {}
    for k, v in tensors.items():
        if v.data_ptr() not in seen:  # tied weights once (transformers ties them again on load)
            seen.add(v.data_ptr())
            unique[k] = v.contiguous()
    ckpt.save_tensors(Path(out), unique)
    return Path(out)
