"""Unify and combined prune+unify projections (METHODS.md §8): feasibility, optimality against
brute force, idempotence, exact counts, and use as an ordinary operator."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD", "1")
torch.set_num_threads(1)

from compressor import Session  # noqa: E402
from compressor.contract.errors import RecipeError  # noqa: E402
from compressor.host.manager import Plugins, load_plugins  # noqa: E402
from compressor.recipe.schema import recipe_from_text  # noqa: E402
from compressor_plugins.blocks.unify import (  # noqa: E402
    FREE,
    PRUNED,
    UNIFIED,
    Unify,
    UnifyConfig,
    block_costs,
    select_labels,
    sigma,
    unify_blocks,
)
from compressor_plugins.blocks.view import layout_of, to_blocks  # noqa: E402


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return load_plugins(autoload=False)


def unify(v: torch.Tensor) -> torch.Tensor:
    return unify_blocks(v[None], torch.ones(1, v.numel(), dtype=torch.bool))[0]


def operator(prune: float, unify_ratio: float, block: tuple[int, int] = (2, 2)) -> Unify:
    return Unify(UnifyConfig(kind="unify", block=block, prune_ratio=prune, unify_ratio=unify_ratio))


def test_sigma_maps_zero_to_plus_one() -> None:
    assert sigma(torch.tensor([0.0, -0.0, 2.0, -3.0])).tolist() == [1.0, 1.0, 1.0, -1.0]


def test_unify_is_feasible_where_sign_would_not_be() -> None:
    assert unify(torch.tensor([0.0, 1.0, -2.0])).tolist() == [1.0, 1.0, -1.0]


def test_unify_is_optimal_against_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    for n in range(1, 7):
        for _ in range(20):
            v = torch.randn(n, generator=g, dtype=torch.float64)
            v[torch.rand(n, generator=g) < 0.2] = 0.0
            best = math.inf
            for signs in itertools.product((-1.0, 1.0), repeat=n):
                s = torch.tensor(signs, dtype=torch.float64)
                a = max(0.0, float(s @ v) / n)  # optimal magnitude for these signs
                best = min(best, float((a * s - v).pow(2).sum()))
            z = unify(v)
            assert z.abs().unique().numel() == 1  # feasible: one shared magnitude
            assert float((z - v).pow(2).sum()) == pytest.approx(best, abs=1e-12)
            _, d = block_costs(v[None], torch.ones(1, n, dtype=torch.bool))
            assert float(d) == pytest.approx(best, abs=1e-12)


def test_partial_edge_block_unifies_over_its_real_entries() -> None:
    weight = torch.tensor([[1.0, -3.0, 2.0]])  # one 4x4 block with 3 real entries
    projected = operator(0.0, 1.0, (4, 4)).project({"w": weight}, None)["w"]
    assert projected.tolist() == [[2.0, -2.0, 2.0]]


def brute_force(p: list[float], d: list[float], kp: int, ku: int) -> float:
    n, best = len(p), math.inf
    for pruned in itertools.combinations(range(n), kp):
        rest = [i for i in range(n) if i not in pruned]
        cost_p = sum(p[i] for i in pruned)
        for unified in itertools.combinations(rest, ku):
            best = min(best, cost_p + sum(d[i] for i in unified))
    return best


def check_selection(p: torch.Tensor, d: torch.Tensor) -> None:
    n = p.numel()
    for kp in range(n + 1):
        for ku in range(n - kp + 1):
            labels = select_labels(p, d, kp, ku)
            assert int((labels == PRUNED).sum()) == kp
            assert int((labels == UNIFIED).sum()) == ku
            cost = float(p[labels == PRUNED].sum() + d[labels == UNIFIED].sum())
            assert cost == pytest.approx(brute_force(p.tolist(), d.tolist(), kp, ku), abs=1e-9)


def test_combined_selection_equals_brute_force_on_real_blocks() -> None:
    g = torch.Generator().manual_seed(1)
    for n in range(1, 9):
        for _ in range(4 if n < 8 else 8):
            blocks = torch.randn(n, 4, generator=g, dtype=torch.float64)
            blocks *= torch.rand(n, 1, generator=g, dtype=torch.float64) * 3
            p, d = block_costs(blocks, torch.ones_like(blocks, dtype=torch.bool))
            check_selection(p, d)


def test_combined_selection_equals_brute_force_with_ties_and_any_costs() -> None:
    g = torch.Generator().manual_seed(2)
    for n in (5, 8):
        for _ in range(6):
            p = torch.randint(0, 4, (n,), generator=g).double()
            d = torch.randint(0, 4, (n,), generator=g).double()  # d > p allowed here
            check_selection(p, d)


def test_layer_projection_is_idempotent_in_value() -> None:
    g = torch.Generator().manual_seed(3)
    for shape in [(8, 12), (64, 1, 5), (6, 5, 3)]:
        for prune, unify_ratio in [(0.5, 0.25), (0.0, 0.5), (0.3, 0.0), (0.25, 0.75)]:
            op = operator(prune, unify_ratio, (4, 4))
            weight = torch.randn(shape, generator=g)
            once = op.project({"w": weight}, None)["w"]
            twice = op.project({"w": once}, None)["w"]
            assert torch.equal(once, twice)


def test_layer_projection_has_exact_counts_and_structure() -> None:
    weight = torch.randn(64, 1, 5)
    op = operator(0.5, 0.25, (4, 4))
    labels = op.labels({"w": weight})["w"]
    projected = op.project({"w": weight}, None)["w"]
    layout = layout_of(weight, (4, 4))
    blocks, valid = to_blocks(projected, layout), layout.valid()
    assert int((labels == PRUNED).sum()) == 16 and int((labels == UNIFIED).sum()) == 8
    assert torch.all(blocks[labels == PRUNED] == 0)
    for row, ok in zip(blocks[labels == UNIFIED], valid[labels == UNIFIED], strict=True):
        assert row[ok].abs().unique().numel() == 1
    free = labels == FREE
    assert torch.equal(blocks[free], to_blocks(weight, layout)[free])


def test_masks_are_nonzeros_and_sparsity_is_the_prune_ratio() -> None:
    op = operator(0.5, 0.25)
    weight = torch.randn(8, 8)
    assert op.fixed_sparsity() == 0.5
    masks = op.masks({"w": weight}, None)["w"]
    assert torch.equal(masks, op.project({"w": weight}, None)["w"] != 0)
    assert float(1 - masks.float().mean()) == 0.5  # 8 of 16 blocks pruned, none zero otherwise
    assert float(1 - op.masks({"w": weight}, 0.25)["w"].float().mean()) == 0.25


def test_ratios_above_one_are_a_located_recipe_error(plugins: Plugins) -> None:
    with pytest.raises(RecipeError, match="prune_ratio \\+ unify_ratio"):
        recipe_from_text(
            """
name: bad
model: {name: mlp}
data: {name: synthetic}
optimizer: {name: sgd}
modifiers:
  - type: oneshot
    operator: {kind: unify, prune_ratio: 0.6, unify_ratio: 0.5}
""",
            registries=plugins.registries,
        )


def test_unify_operator_works_in_a_oneshot_modifier(plugins: Plugins) -> None:
    recipe = recipe_from_text(
        """
name: oneshot-unify
model: {name: mlp}
data: {name: synthetic}
optimizer: {name: sgd, lr: 0.1}
modifiers:
  - type: oneshot
    operator: {kind: unify, block: [4, 4], prune_ratio: 0.5, unify_ratio: 0.25}
""",
        registries=plugins.registries,
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    session = Session(model, recipe, steps_per_epoch=4, plugins=plugins)
    session.begin()
    layout = layout_of(model[0].weight, (4, 4))
    zero_blocks = (to_blocks(model[0].weight.detach(), layout) == 0).all(dim=1)
    assert int(zero_blocks.sum()) == 8
