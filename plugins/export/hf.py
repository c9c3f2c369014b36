"""``hf`` export: a Hugging Face model as a ``save_pretrained`` folder plain transformers loads.

The folder holds ``config.json`` (the run's model config: the recipe's fields plus what the
data gave it, such as the vocabulary size, recorded in the checkpoint), ``model.safetensors``
and ``generation_config.json`` where the model generates. Masked weights are stored as they
are (dense, zeros included). Before the folder is kept it is loaded back with the model's own
class and every tensor compared bit for bit with the run's model.

Load it with ``AutoModelForCausalLM.from_pretrained(folder)`` (or the ``AutoModelFor*`` class of
the architecture): no compressor import is needed.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compressor.plugin_api import (
    CompressorError,
    EvaluationContext,
    Exporter,
    InputError,
    TypeConfig,
    hookimpl,
    require_package,
    staged,
)

FORMAT = "hf"


def transformers_offline() -> Any:
    """``transformers`` with the hub switched off (nothing is ever downloaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return require_package("transformers", "hf", "a Hugging Face export")


def hf_model(model: nn.Module, format_name: str = FORMAT) -> Any:
    """The run's ``transformers`` model, or an :class:`InputError` naming what it is instead."""
    transformers = transformers_offline()
    inner = model
    if not isinstance(inner, transformers.PreTrainedModel):
        raise InputError(
            f"--format {format_name} needs a Hugging Face model (model: {{name: hf, ...}}); "
            f"this run's model is a {type(inner).__name__}"
        )
    return inner


def same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (shape, dtype or any bit), or are missing from ``actual``."""
    return [
        name
        for name, tensor in expected.items()
        if name not in actual
        or actual[name].dtype != tensor.dtype
        or not torch.equal(actual[name].cpu(), tensor.cpu())
    ]


def save_verified(
    model: Any,
    folder: Path,
    verify: Callable[[Any], str | None],
    *,
    cls: Any = None,
    after_save: Callable[[Path], None] | None = None,
) -> Any:
    """The one way an exporter writes a Hugging Face folder: ``save_pretrained`` (safetensors)
    into a staging folder beside ``folder``, ``after_save`` (e.g. a config update), reload with
    ``cls`` (default: the model's class, local files only) and ``verify`` it; a returned problem
    is a :class:`CompressorError` and nothing is written, else the folder moves into place.
    Returns the reloaded model."""
    with staged(folder) as stage:
        work = stage / folder.name
        model.save_pretrained(work, safe_serialization=True)
        if after_save is not None:
            after_save(work)
        reloaded = (cls or type(model)).from_pretrained(work, local_files_only=True)
        problem = verify(reloaded)
        if problem:
            raise CompressorError(f"{problem} — nothing was written")
    return reloaded


def save_hf_folder(model: nn.Module, folder: Path) -> Path:
    """``save_pretrained`` into ``folder`` (safetensors), then verify the reload bit for bit."""
    inner = hf_model(model)

    def identical(loaded: Any) -> str | None:
        differ = same_tensors(inner.state_dict(), loaded.state_dict())
        if not differ:
            return None
        return (
            f"the saved folder does not reload to the run's model: {', '.join(differ[:3])} differ"
        )

    save_verified(copy.deepcopy(inner).cpu(), folder, identical)
    return folder


class HFExporter(Exporter):
    """``--format hf``: a ``save_pretrained`` folder (module doc)."""

    class Config(TypeConfig):
        format: Literal["hf"] = "hf"

    suffix = ""
    requires = (("transformers", "hf"), ("safetensors", "hf"))

    def check(self, context: EvaluationContext, model: nn.Module) -> None:
        hf_model(model)

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        return save_hf_folder(model, Path(path))


@hookimpl
def register_exporters(register: Callable[[type], None]) -> None:
    register(HFExporter)
