"""TensorBoard beside metrics.jsonl (`train.log_to: [jsonl, tensorboard]`; optional extra `tensorboard`).

    tensorboard --logdir runs/NAME/tensorboard          # then open http://localhost:6006

The trainer writes every metrics row through `Metrics`: to metrics.jsonl as always, and as TensorBoard scalars
(train/loss, train/grad_norm, train/lr, train/tok_per_s, validation/nats_per_token, validation/ppl or
validation/loss) when asked. At each validation it also logs a few samples drawn from the model being trained
(text tab, `samples`): its raw weights, not the EMA, on rank 0 only, and not for seq2seq runs (they need sources)
or sharded (FSDP) models. On --resume, events past the resumed step are dropped (`purge_step`), as the jsonl's are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from textdiff.errors import TextdiffError

TAGS = {"loss": "train/loss", "grad_norm": "train/grad_norm", "lr": "train/lr", "tok_per_s": "train/tok_per_s",
        "val_nll": "validation/nats_per_token", "val_ppl": "validation/ppl", "val_loss": "validation/loss"}
"""metrics.jsonl's keys -> TensorBoard's tags."""
SAMPLES = 4
"""Samples logged at each validation (fewer when the recipe's sample.num_samples is smaller)."""


class Metrics:
    """metrics.jsonl (the trainer's MetricsLog) and the other sinks of train.log_to, behind one `write`."""

    def __init__(self, jsonl, log_to: tuple[str, ...], run_dir: Path, start_step: int):
        self.jsonl, self.run_dir, self.tokenizer = jsonl, Path(run_dir), None
        self.writer = open_writer(self.run_dir / "tensorboard", start_step) if "tensorboard" in log_to else None

    def write(self, **row) -> None:
        self.jsonl.write(**row)
        if self.writer is not None:
            for key, tag in TAGS.items():
                if key in row:
                    self.writer.add_scalar(tag, row[key], row["step"])

    def validated(self, step: int, recipe, model, backend, sharded: bool = False) -> None:
        """After a validation: a few samples of the model being trained, as text (TensorBoard only)."""
        if self.writer is None or sharded or recipe.data.source_field or not recipe.sample.num_samples:
            return
        self.writer.add_text("samples", sample_markdown(self.draw(step, recipe, model, backend)), step)
        self.writer.flush()

    def draw(self, step: int, recipe, model, backend) -> list[str]:
        from textdiff.pipeline import TextDiffusionPipeline
        from textdiff.tokenization import load_tokenizer

        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.run_dir)
        was_training = model.training
        pipe = TextDiffusionPipeline(recipe, model, backend, self.tokenizer, next(model.parameters()).device)
        try:
            return pipe.generate(min(SAMPLES, recipe.sample.num_samples), seed=step).texts
        except TextdiffError as e:  # e.g. sample options that do not fit: say so in the log, keep training
            return [f"(no samples: {e})"]
        finally:
            model.train(was_training)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_writer(log_dir: Path, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TextdiffError("train.log_to: tensorboard needs the tensorboard package: pip install -e "
                            "\".[tensorboard]\" (or drop tensorboard from train.log_to)") from None
    return SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)  # keeps <= start_step


def sample_markdown(texts: list[str]) -> str:
    """TensorBoard renders text as markdown: one numbered line per sample."""
    return "\n".join(f"{i}. `{t}`" for i, t in enumerate(texts))


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} read back with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_texts(log_dir: Path, tag: str = "samples") -> list[tuple[int, str]]:
    """[(step, text)] of a text tag, read back with TensorBoard's event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags().get("tensors", [])
    name: Optional[str] = next((t for t in tags if t.startswith(tag)), None)
    if name is None:
        return []
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in acc.Tensors(name)]
