"""Block view (METHODS.md §1 Block, §8 Blocks): exact round trip, logical pads, block pruning."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD", "1")
torch.set_num_threads(1)

from compressor import Session  # noqa: E402
from compressor.host.manager import Plugins, load_plugins  # noqa: E402
from compressor.recipe.schema import recipe_from_text  # noqa: E402
from compressor_plugins.blocks.view import (  # noqa: E402
    expand,
    from_blocks,
    gemm_view,
    layout_of,
    to_blocks,
)

SHAPES = [(8, 8), (5, 7), (64, 1, 5), (6, 3, 3, 3), (7, 5, 3), (3, 2, 2, 2, 2)]
BLOCKS = [(4, 4), (1, 4), (3, 2), (1, 1), (16, 16)]


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return load_plugins(autoload=False)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("view", ["in_k", "k_in"])
def test_round_trip_is_exact_for_any_shape(shape: tuple[int, ...], view: str) -> None:
    weight = torch.randn(shape)
    for block in BLOCKS:
        layout = layout_of(weight, block, view)  # type: ignore[arg-type]
        blocks = to_blocks(weight, layout)
        assert blocks.shape == (layout.num_blocks, block[0] * block[1])
        assert torch.equal(from_blocks(blocks, layout), weight)
        assert int(layout.counts().sum()) == weight.numel()
        assert torch.all(blocks[~layout.valid()] == 0)


def test_pads_are_never_written_back() -> None:
    weight = torch.randn(5, 7)
    layout = layout_of(weight, (4, 4))
    blocks = to_blocks(weight, layout)
    blocks[~layout.valid()] = float("nan")
    assert torch.equal(from_blocks(blocks, layout), weight)
    assert not torch.isnan(weight).any()


def test_first_mnist1d_conv_gets_ragged_edge_blocks() -> None:
    # [64, 1, 5] -> GEMM [64, 5]: 16 x 2 blocks of 4x4; the second column holds one real column.
    layout = layout_of(torch.zeros(64, 1, 5), (4, 4))
    assert layout.grid == (16, 2)
    assert layout.counts().tolist() == [16, 4] * 16


def test_views_order_columns_as_documented() -> None:
    weight = torch.randn(4, 3, 5)  # [out, in, k]
    in_k, k_in = gemm_view(weight, "in_k"), gemm_view(weight, "k_in")
    for i in range(3):
        for k in range(5):
            assert torch.equal(in_k[:, i * 5 + k], weight[:, i, k])
            assert torch.equal(k_in[:, k * 3 + i], weight[:, i, k])


def test_expand_broadcasts_one_value_per_block() -> None:
    weight = torch.randn(6, 10)
    layout = layout_of(weight, (4, 4))
    values = torch.arange(layout.num_blocks, dtype=torch.float32)
    full = expand(values, layout)
    assert torch.equal(
        to_blocks(full, layout)[layout.valid()],
        values.repeat_interleave(16)[layout.valid().flatten()],
    )


def test_block_operator_keeps_the_largest_blocks(plugins: Plugins) -> None:
    cls = plugins.registries.operators.get("block").cls
    config = cls.Config(kind="block", block=(2, 3))
    operator = cls(config)
    weight = torch.randn(7, 8)
    mask = operator.masks({"w": weight}, 0.4)["w"]
    layout = layout_of(weight, (2, 3))
    kept = to_blocks(mask.float(), layout)
    valid = layout.valid()
    per_block = kept.sum(dim=1) / valid.sum(dim=1)
    assert set(per_block.tolist()) <= {0.0, 1.0}  # masks are constant per block
    keep = per_block.bool()
    assert int(keep.sum()) == round(0.6 * layout.num_blocks)
    norms = to_blocks(weight, layout).pow(2).sum(dim=1)
    assert norms[keep].min() >= norms[~keep].max()


def test_block_operator_global_scope_counts_over_all_layers(plugins: Plugins) -> None:
    cls = plugins.registries.operators.get("block").cls
    operator = cls(cls.Config(kind="block", block=(4, 4), scope="global"))
    weights = {"a": torch.randn(8, 8), "b": torch.randn(8, 16) * 3}
    masks = operator.masks(weights, 0.5)
    kept = sum(
        int(to_blocks(masks[n].float(), layout_of(w, (4, 4))).amax(dim=1).sum())
        for n, w in weights.items()
    )
    assert kept == 6  # of 4 + 8 blocks


def test_block_operator_works_where_any_operator_goes(plugins: Plugins) -> None:
    recipe = recipe_from_text(
        """
name: oneshot-block
model: {name: mlp}
data: {name: synthetic}
optimizer: {name: sgd, lr: 0.1}
modifiers:
  - type: oneshot
    operator: {kind: block, block: [4, 4]}
    sparsity: 0.5
""",
        registries=plugins.registries,
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 8, 5), nn.Flatten(), nn.Linear(8 * 12, 4))
    session = Session(model, recipe, steps_per_epoch=4, plugins=plugins)
    session.begin()
    for name, param in model.named_parameters():
        if name.endswith("weight"):
            layout = layout_of(param, (4, 4))
            zero_blocks = int((to_blocks(param.detach(), layout) == 0).all(dim=1).sum())
            assert zero_blocks == layout.num_blocks // 2
