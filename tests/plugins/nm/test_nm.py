"""N:M operator: the group invariant, pinned layouts, skipping, validation and gradual N:M."""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD", "1")
torch.set_num_threads(1)

from compressor import Session  # noqa: E402
from compressor.contract.errors import RecipeError  # noqa: E402
from compressor.host.manager import Plugins, load_plugins  # noqa: E402
from compressor.plugin_api import (  # noqa: E402
    NMSkippedWarning,
    from_group_layout,
    group_view,
    nm_mask,
    nm_ramp_mask,
    nm_violations,
    to_group_layout,
)
from compressor.recipe.schema import load_recipe, recipe_from_text  # noqa: E402
from compressor_plugins.zoo.models import MNIST1DCNN  # noqa: E402
from tests.support import ROOT  # noqa: E402

LOCATED = re.compile(r"^test\.yaml:\d+:\d+: ")

HEAD = """\
name: nm
model: {name: mlp}
data: {name: synthetic}
train: {epochs: 4}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
modifiers:
"""


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return load_plugins(autoload=False)


def session_for(model: nn.Module, modifiers: str, plugins: Plugins, spe: int = 10) -> Session:
    recipe = recipe_from_text(HEAD + modifiers, "test.yaml", registries=plugins.registries)
    return Session(model, recipe, steps_per_epoch=spe, plugins=plugins)


def mlp(sizes: tuple[int, ...] = (8, 16, 8)) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


# -- the invariant -------------------------------------------------------------------------


@pytest.mark.parametrize("keep,group", [(2, 4), (1, 4), (4, 8), (3, 8)])
@pytest.mark.parametrize("shape", [(6, 16), (5, 8, 3), (4, 16, 3, 2)])
def test_every_group_keeps_at_most_n_and_exactly_n_when_it_had_n(
    keep: int, group: int, shape: tuple[int, ...]
) -> None:
    generator = torch.Generator().manual_seed(keep * 100 + group)
    weight = torch.randn(shape, generator=generator)
    weight[torch.rand(shape, generator=generator) < 0.3] = 0.0  # some groups have < N non-zeros
    masked = weight * nm_mask(weight, keep, group)
    before = (group_view(weight, group) != 0).sum(dim=1)
    after = (group_view(masked, group) != 0).sum(dim=1)
    assert torch.all(after <= keep)
    assert torch.all(after[before >= keep] == keep)
    assert torch.all(after[before < keep] == before[before < keep])
    assert nm_violations(masked, keep, group) == 0


# -- layouts pinned on hand-made tensors -----------------------------------------------------


def test_linear_mask_runs_along_the_input_axis_with_stable_ties() -> None:
    weight = torch.tensor(
        [
            [1.0, -3.0, 2.0, 0.5, 4.0, 4.0, -4.0, 1.0],
            [0.0, 0.0, 0.0, 7.0, -1.0, 2.0, -3.0, 0.1],
        ]
    )
    expected = torch.tensor(
        [
            [False, True, True, False, True, True, False, False],  # tie 4,4,-4: first two win
            [True, False, False, True, False, True, True, False],  # zeros: earliest is kept
        ]
    )
    assert torch.equal(nm_mask(weight, 2, 4), expected)


def test_conv1d_groups_never_straddle_kernel_positions() -> None:
    # [out=1, in=4, k=2]: groups are w[0, :, 0] and w[0, :, 1], i.e. the columns below.
    weight = torch.tensor([[[1.0, 8.0], [5.0, 7.0], [-6.0, 1.0], [2.0, -9.0]]])
    expected = torch.tensor([[[False, True], [True, False], [True, False], [False, True]]])
    assert torch.equal(nm_mask(weight, 2, 4), expected)
    # 1:4 along the input axis keeps one per kernel position
    assert torch.equal(
        nm_mask(weight, 1, 4),
        torch.tensor([[[False, False], [False, False], [True, False], [False, True]]]),
    )


def test_conv2d_groups_run_along_input_channels_per_kernel_position() -> None:
    # [out=1, in=4, kh=1, kw=2]; groups: w[0, :, 0, 0] and w[0, :, 0, 1].
    weight = torch.tensor([[[[3.0, -1.0]], [[-2.0, 5.0]], [[0.5, 4.0]], [[4.0, 0.0]]]])
    expected = torch.tensor([[[[True, False]], [[False, True]], [[False, True]], [[True, False]]]])
    assert torch.equal(nm_mask(weight, 2, 4), expected)


@pytest.mark.parametrize("shape", [(3, 8), (3, 8, 5), (2, 8, 3, 4), (2, 4, 2, 3, 2)])
def test_conv_permutation_round_trips_and_puts_input_last(shape: tuple[int, ...]) -> None:
    weight = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    layout = to_group_layout(weight)
    assert layout.shape == (shape[0], *shape[2:], shape[1])
    assert torch.equal(from_group_layout(layout), weight)
    if len(shape) == 4:
        assert layout[1, 2, 3, 5] == weight[1, 5, 2, 3]


# -- non-divisible layers --------------------------------------------------------------------


def test_non_divisible_layers_are_skipped_with_one_warning(plugins: Plugins) -> None:
    model = mlp((6, 8, 10, 4))  # 0.weight has in=6 (skipped), 2.weight in=8, 4.weight in=10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = session_for(model, "  - type: oneshot\n    operator: {kind: nm}\n", plugins)
    nm_warnings = [w for w in caught if issubclass(w.category, NMSkippedWarning)]
    assert len(nm_warnings) == 1
    text = str(nm_warnings[0].message)
    assert "0.weight (input dim 6)" in text and "4.weight (input dim 10)" in text
    assert "2.weight" not in text
    dense = model[0].weight.detach().clone()
    session.begin()
    assert torch.all(session.masks.get("0.weight"))
    assert torch.equal(model[0].weight, dense)
    assert nm_violations(model[2].weight, 2, 4) == 0
    assert (model[2].weight == 0).float().mean().item() == 0.5


def test_strict_rejects_non_divisible_layers_with_a_located_error(plugins: Plugins) -> None:
    with pytest.raises(RecipeError) as info:
        session_for(
            mlp((6, 8)), "  - type: oneshot\n    operator: {kind: nm, strict: true}\n", plugins
        )
    message = str(info.value)
    assert LOCATED.match(message), message
    assert "modifiers[0].operator.strict" in message
    assert "0.weight (input dim 6)" in message and "not a multiple of 4" in message


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operator,text",
    [
        ("{kind: nm, keep: 4, group: 4}", "keep must be smaller than group (N < M)"),
        ("{kind: nm, keep: 5, group: 4}", "keep must be smaller than group (N < M)"),
        ("{kind: nm, keep: 0, group: 4}", "keep (N in N:M) must be at least 1, got 0"),
    ],
)
def test_bad_patterns_are_rejected_with_a_location(
    plugins: Plugins, operator: str, text: str
) -> None:
    with pytest.raises(RecipeError) as info:
        recipe_from_text(
            HEAD + f"  - type: oneshot\n    operator: {operator}\n",
            "test.yaml",
            registries=plugins.registries,
        )
    message = str(info.value)
    assert LOCATED.match(message), message
    assert "modifiers[0].operator" in message and text in message


@pytest.mark.parametrize(
    "modifier,where,text",
    [
        (
            "  - type: gmp\n    operator: {kind: nm}\n"
            "    schedule: {kind: cubic, initial: 0.0, final: 0.8, end: 2ep}\n",
            "modifiers[0].schedule.final",
            "the operator's pattern has sparsity 0.5, but 0.8 is asked for",
        ),
        (
            "  - type: oneshot\n    operator: {kind: nm, keep: 1, group: 4}\n    sparsity: 0.5\n",
            "modifiers[0].sparsity",
            "the operator's pattern has sparsity 0.75, but 0.5 is asked for",
        ),
        (
            "  - type: gradual_nm\n    operator: {kind: nm}\n"
            "    schedule: {kind: cubic, initial: 0.0, final: 0.7, end: 2ep}\n",
            "modifiers[0].schedule.final",
            "the N:M 2:4 pattern has sparsity 0.5, but the schedule ends at 0.7",
        ),
    ],
)
def test_schedules_asking_nm_for_another_sparsity_are_located_errors(
    plugins: Plugins, modifier: str, where: str, text: str
) -> None:
    with pytest.raises(RecipeError) as info:
        session_for(mlp(), modifier, plugins)
    message = str(info.value)
    assert LOCATED.match(message), message
    line = int(message.split(":")[1])
    assert (HEAD + modifier).splitlines()[line - 1].strip().startswith(("schedule:", "sparsity:"))
    assert where in message and text in message


def test_gradual_nm_rejects_other_operators(plugins: Plugins) -> None:
    with pytest.raises(RecipeError, match=r"gradual_nm needs an N:M operator"):
        session_for(
            mlp(),
            "  - type: gradual_nm\n    operator: {kind: magnitude}\n"
            "    schedule: {kind: linear, final: 0.5, end: 2ep}\n",
            plugins,
        )


# -- one-shot and gradual ----------------------------------------------------------------------


def train(model: nn.Module, session: Session, steps: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    x, y = torch.randn(32, 8), torch.randint(0, 8, (32,))
    optimizer = session.optimizer()
    snapshots = []
    for _ in range(steps):

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        session.step_end(optimizer.step(closure))
        snapshots.append({n: m.clone() for n, m in session.masks.state_dict().items()})
    return snapshots


def test_oneshot_with_nm_and_no_sparsity_prunes_to_exact_2_4(plugins: Plugins) -> None:
    model = mlp()
    session = session_for(model, "  - type: oneshot\n    operator: {kind: nm}\n", plugins)
    assert session.modifiers[0].sparsity == 0.5
    train(model, session, 5)
    for layer in (model[0], model[2]):
        kept = (group_view(layer.weight, 4) != 0).sum(dim=1)
        assert torch.all(kept == 2)


def test_gradual_nm_ramps_monotonically_and_ends_exactly_n_m(plugins: Plugins) -> None:
    model = mlp((8, 16, 8))
    session = session_for(
        model,
        "  - type: gradual_nm\n    operator: {kind: nm, keep: 1, group: 4}\n"
        "    schedule: {kind: cubic, initial: 0.0, final: 0.75, start: 2, end: 12, every: 2}\n",
        plugins,
    )
    snapshots = train(model, session, 20)
    sparsities = [
        1.0 - sum(int(m.sum()) for m in snap.values()) / sum(m.numel() for m in snap.values())
        for snap in snapshots
        if snap
    ]
    assert len(set(sparsities)) >= 4  # really gradual: several intermediate levels
    assert all(a <= b for a, b in zip(sparsities, sparsities[1:], strict=False))
    for before, after in zip(snapshots, snapshots[1:], strict=False):
        for name, mask in before.items():
            assert torch.all(after[name] <= mask)  # once pruned, always pruned
    at_end = snapshots[11]  # after step 12
    for name, mask in at_end.items():
        assert torch.all(group_view(mask, 4).sum(dim=1) == 1), name
        assert torch.equal(snapshots[-1][name], mask)  # frozen after end
    for layer in (model[0], model[2]):
        assert torch.all((group_view(layer.weight, 4) != 0).sum(dim=1) == 1)


@pytest.mark.parametrize("shape", [(6, 12), (3, 8, 3)])
def test_ramp_mask_caps_each_group_and_hits_the_count(shape: tuple[int, ...]) -> None:
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    assert torch.all(nm_ramp_mask(weight, 2, 4, 0.0))
    assert torch.equal(nm_ramp_mask(weight, 2, 4, 1.0), nm_mask(weight, 2, 4))
    for fraction in (0.2, 0.5, 0.8):
        mask = nm_ramp_mask(weight, 2, 4, fraction)
        pruned = (~group_view(mask, 4)).sum(dim=1)
        assert torch.all(pruned <= 2)
        assert int(pruned.sum()) == round(fraction * weight.numel() / 4 * 2)
        # the pruned members of a group are its smallest ones
        scores = group_view(weight.abs(), 4)
        for row in range(scores.shape[0]):
            kept, gone = (
                scores[row][group_view(mask, 4)[row]],
                scores[row][~group_view(mask, 4)[row]],
            )
            if gone.numel():
                assert gone.max() <= kept.min()


def test_gmp_with_an_nm_operator_passes_partial_patterns_and_ends_in_n_m(plugins: Plugins) -> None:
    model = mlp()
    session = session_for(
        model,
        "  - type: gmp\n    operator: {kind: nm}\n"
        "    schedule: {kind: linear, initial: 0.0, final: 0.5, start: 0, end: 6}\n",
        plugins,
    )
    snapshots = train(model, session, 8)
    assert 0.0 < 1 - float(snapshots[1]["0.weight"].float().mean()) < 0.5
    assert nm_violations(model[0].weight, 2, 4) == 0
    assert (model[0].weight == 0).float().mean().item() == 0.5


# -- recipes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gmp-nm24-mnist1d.yaml", "oneshot-nm24-mnist1d.yaml"])
def test_shipped_recipes_validate_and_bind_to_the_q_model(plugins: Plugins, name: str) -> None:
    recipe = load_recipe(ROOT / "recipes" / name, registries=plugins.registries)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NMSkippedWarning)  # the recipes exclude the 1-channel conv
        session = Session(MNIST1DCNN(40, 10, 64), recipe, steps_per_epoch=157, plugins=plugins)
    assert session.modifiers[0].masked_names() == {
        "features.3.weight",
        "features.6.weight",
        "features.9.weight",
        "classifier.weight",
    }
