"""OWL (METHODS.md §10, arXiv 2310.05175): outlier ratios and the allocation, exactly, and
``scope: owl`` on a Llama-style model giving each block the sparsity its ratio earns."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from compressor_plugins.posttrain.owl import outlier_ratio, owl_levels
from tests.plugins.posttrain.support import build

torch.set_num_threads(1)


def test_outlier_ratio_is_over_the_units_scores_concatenated() -> None:
    a = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 13.0]])
    # mean of all six scores 18/6 = 3; above 2·3 = 6: only the 13
    assert outlier_ratio([a, b], 2.0) == pytest.approx(1 / 6)
    assert outlier_ratio([a, b], 5.0) == 0.0  # 13 > 15 is false


def test_owl_levels_by_hand() -> None:
    # D = (0.01, 0.03, 0.02), λ = 0.1: r = 0.2·(D − 0.01)/0.02 = (0, 0.2, 0.1), mean 0.1;
    # S = 0.6: r − 0.1 + 0.4 = (0.3, 0.5, 0.4) kept; sparsities (0.7, 0.5, 0.6)
    levels = owl_levels({0: 0.01, 1: 0.03, 2: 0.02}, 0.6, 0.1)
    assert levels == pytest.approx({0: 0.7, 1: 0.5, 2: 0.6}, abs=1e-12)
    assert sum(levels.values()) / 3 == pytest.approx(0.6)
    assert owl_levels({0: 0.2, 1: 0.2}, 0.5, 0.08) == {0: 0.5, 1: 0.5}  # equal ratios
    assert owl_levels({0: 0.0, 1: 1.0}, 0.95, 0.5) == pytest.approx(
        {0: 1.0, 1: 0.45}
    )  # 1.45 clipped


def test_the_config_takes_m_and_lambda_and_refuses_nm() -> None:
    operator: Any = build({"kind": "sparsegpt", "scope": "owl", "owl": {"M": 7, "lambda": 0.2}})
    assert (operator.config.owl.M, operator.config.owl.lam) == (7, 0.2)
    assert operator.label(0.5) == "sparsegpt owl 0.5"
    with pytest.raises(ValueError, match="scope: owl allocates unstructured"):
        build({"kind": "wanda", "nm": [2, 4], "scope": "owl"})


@pytest.mark.parametrize("kind", ["wanda", "sparsegpt"])
def test_owl_prunes_each_block_to_its_level(kind: str) -> None:
    pytest.importorskip("transformers")
    from tests.plugins.posttrain.support import bound
    from tests.plugins.posttrain.test_pipeline import llama, token_batches

    net = llama(3)
    inputs = token_batches()
    # the dense Wanda scores of every target, per block, as OWL reads them
    norms: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(m: torch.nn.Module, a: tuple[Any, ...]) -> None:
            x = a[0].detach().reshape(-1, a[0].shape[-1]).double()
            norms[name] = norms.get(name, 0) + x.square().sum(0)

        return record

    linears = {n: m for n, m in net.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        for batch in inputs:
            net(**batch)
    for handle in handles:
        handle.remove()
    ratios = {
        b: outlier_ratio(
            [
                m.weight.detach().abs() * norms[n].sqrt().float()[None, :]
                for n, m in linears.items()
                if n.startswith(f"{b}.")
            ],
            5.0,
        )
        for b in range(3)
    }
    expected = owl_levels(ratios, 0.5, 0.08)
    assert len(set(expected.values())) > 1  # the blocks differ: the test can tell
    config = {"kind": kind, "scope": "owl", "calibration": {"sequential": "block"}}
    operator: Any = bound(config, net, inputs, include=["model.layers.*"])
    masks = operator.masks({t.name: t.param for t in operator.targets}, 0.5)
    for b in range(3):
        kept = [m for n, m in masks.items() if n.startswith(f"model.layers.{b}.")]
        zeros = sum(int((~m).sum()) for m in kept) / sum(m.numel() for m in kept)
        assert zeros == pytest.approx(expected[b], abs=0.02)
