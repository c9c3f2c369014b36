"""The Hugging Face folder of a transformer whose heads/neurons were removed (``--format pruned``).

Removal itself is the kit's (:func:`compressor.plugin_api.prune_transformer`). When every layer
keeps the same number of heads and of neurons (``allocation: uniform``), the small model is
also written as a Hugging Face folder: the config gets the new ``intermediate_size`` (GPT-2:
``n_inner``), ``num_attention_heads``, ``num_key_value_heads`` and an explicit ``head_dim``; it
is written and reloaded by :func:`~compressor_plugins.export.hf.save_verified` (the ``hf``
exporter's one way to write a folder) and its outputs checked against the masked model. BERT and
GPT-2 configs derive the head size from ``hidden_size / heads``, so with heads removed they
cannot describe the model: then only the torch file is written, and the report says why.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.plugin_api import UnitGroup, max_diff
from compressor_plugins.export.hf import save_verified

HF_SUFFIX = "-hf"  # the HF folder sits beside the export file: export-pruned-hf/


def hf_config(model: nn.Module, groups: list[UnitGroup], kept: dict[str, dict[str, int]]) -> Any:
    """The small model's HF config, or a string saying why there is none."""
    config = copy.deepcopy(getattr(model, "config", None))
    if config is None or not hasattr(config, "to_dict"):
        return "the model has no Hugging Face config"
    heads = {g.module: g for g in groups if g.kind == "attention"}
    neurons = {g.module: g for g in groups if g.kind == "feed_forward"}
    head_counts, neuron_counts = set(kept["heads"].values()), set(kept["neurons"].values())
    if len(head_counts) > 1 or len(neuron_counts) > 1:
        return "layers keep different numbers of heads or neurons (allocation: global)"
    if neuron_counts:
        (n,) = neuron_counts
        family = next(iter(neurons.values())).family
        setattr(config, "n_inner" if family == "gpt2" else "intermediate_size", n)
    if head_counts:
        (k,) = head_counts
        sample = next(iter(heads.values()))
        if k != sample.size:
            if sample.family != "llama":
                return (
                    f"a {sample.family.upper()} config derives the head size from hidden_size "
                    "/ heads and cannot describe removed heads"
                )
            config.num_attention_heads = k * sample.group
            config.num_key_value_heads = k
            config.head_dim = sample.head_dim
            if config.hidden_size % config.num_attention_heads:
                return mistral_config(config)
    return config


def mistral_config(config: Any) -> Any:
    """The same model as a Mistral config: LlamaConfig refuses ``hidden_size`` not divisible
    by the head count even with an explicit ``head_dim``; Mistral's architecture is Llama's
    (RMSNorm, RoPE, SwiGLU, no biases) and takes ``head_dim`` as given."""
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "the Llama config refuses the new head count, and Mistral has no biases"
    import transformers

    fields = transformers.MistralConfig().to_dict()
    given = {k: v for k, v in config.to_dict().items() if k in fields}
    given.update(sliding_window=None, model_type="mistral")
    given.pop("architectures", None)
    return transformers.MistralConfig(**given)


def hf_class(model: nn.Module, config: Any) -> Any:
    """The transformers class for ``config``: the model's own, or its Mistral twin."""
    name = type(model).__name__
    if getattr(config, "model_type", "") == "mistral" and name.startswith("Llama"):
        import transformers

        return getattr(transformers, "Mistral" + name.removeprefix("Llama"))
    return type(model)


def write_hf_folder(
    small: Any,
    config: Any,
    masked: nn.Module,
    folder: Path,
    probe: torch.Tensor,
    atol: float,
) -> float:
    """Save ``small`` with ``config`` as an HF folder, reload it, check it against ``masked``
    on ``probe`` (atomic: a failed check leaves nothing). Returns the reloaded max |diff|."""
    cls = hf_class(small, config)
    if cls is type(small):
        model = copy.deepcopy(small)
        model.config = config
    else:
        model = cls(config)
        model.load_state_dict(small.state_dict())
    diffs: list[float] = []

    def check(reloaded: nn.Module) -> str | None:
        diffs.append(max_diff(reloaded.eval(), masked, probe))
        if diffs[-1] <= atol:
            return None
        return f"the Hugging Face folder's model differs from the masked model by {diffs[-1]:.3g}"

    save_verified(model, folder, check, cls=cls)
    return diffs[-1]


def hf_folder_for(path: Path) -> Path:
    return path.with_name(path.stem + HF_SUFFIX)
