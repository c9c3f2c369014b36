"""The block-by-block calibration pipeline (METHODS.md §10): ``sequential: exact`` gives the
layer-by-layer driver's weights bit for bit, block forwards grow linearly with depth, layers
reading one input share one statistic, and models without repeated blocks keep working."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.plugins.posttrain.support import bound, layer_by_layer, weights_of
from tests.support.cram import tiny_model
from tests.support.llama import tiny_llama

transformers = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed"
)
torch.set_num_threads(1)

CONFIGS = [
    {"kind": "wanda"},
    {"kind": "sparsegpt", "block_size": 16},
    {"kind": "gptq", "bits": 4, "group_size": 16},
]


def llama(layers: int = 2, seed: int = 0) -> nn.Module:
    return tiny_llama(seed=seed, num_hidden_layers=layers)


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def token_batches(count: int = 3, size: int = 2, length: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(0, 64, (size, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def level(operator: Any) -> float:
    fixed = operator.fixed_sparsity()
    return 0.5 if fixed is None else fixed


def assert_same(
    new: dict[str, tuple[torch.Tensor, torch.Tensor]],
    old: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    assert new.keys() == old.keys()
    for name in old:
        assert torch.equal(new[name][0], old[name][0]), name
        assert torch.equal(new[name][1], old[name][1]), name


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c["kind"])
@pytest.mark.parametrize("model", ["llama", "gpt2", "mlp"])
def test_exact_mode_equals_the_layer_by_layer_driver(config: dict[str, Any], model: str) -> None:
    if model == "mlp":
        net, inputs = tiny_model(), [torch.randn(8, 6), torch.randn(8, 6)]
        if config["kind"] == "gptq":
            config = {"kind": "gptq", "bits": 4}
    else:
        net, inputs = (llama() if model == "llama" else gpt2()), token_batches()
    config = {**config, "calibration": {"sequential": "exact"}}
    include = ["*"] if model == "gpt2" else []  # the tied head too: outside the blocks
    operator = bound({**config, "include": include}, net, inputs, include=include)
    weights = {k: v.detach().clone() for k, v in weights_of(operator).items()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    old = layer_by_layer(operator, weights, level(operator))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    new = operator.compress(weights, level(operator))  # type: ignore[attr-defined]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert_same(new, old)


def block_forwards(layers: int, sequential: str) -> int:
    net = llama(layers)
    count = [0]
    for block in net.model.layers:
        block.register_forward_pre_hook(lambda m, a: count.__setitem__(0, count[0] + 1))
    config = {"kind": "sparsegpt", "calibration": {"sequential": sequential}}
    operator = bound(config, net, token_batches())
    operator.project(weights_of(operator), 0.5)
    return count[0]


@pytest.mark.parametrize("sequential", ["exact", "block"])
def test_block_forwards_grow_linearly_with_depth(sequential: str) -> None:
    counts = [block_forwards(n, sequential) for n in (2, 4, 6)]
    assert counts[2] - counts[1] == counts[1] - counts[0]  # constant per block
    # per block and batch (3 batches): exact runs (4 groups + 1 propagating) forwards, block 2;
    # the probe runs each block once (the LM head stays dense: no model forwards for it)
    per_block = 3 * (5 if sequential == "exact" else 2) + 1
    assert counts[1] - counts[0] == 2 * per_block


@pytest.mark.parametrize("sequential", ["exact", "block"])
def test_one_block_boundary_of_activations_is_held_at_a_time(sequential: str) -> None:
    """Block 1's compressed pass replaces each cached input by its output as it goes: when it
    runs on the last batch, the earlier batches' inputs are already freed (the issue's memory
    bound: one boundary's activations, not two)."""
    import gc
    import weakref

    net = llama(2)
    seen: list[weakref.ref[torch.Tensor]] = []
    alive: list[int] = []

    def remember(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        if not any(ref() is x for ref in seen):
            seen.append(weakref.ref(x))
        gc.collect()
        alive.append(sum(ref() is not None for ref in seen))

    net.model.layers[0].register_forward_pre_hook(remember, with_kwargs=True)
    config = {"kind": "sparsegpt", "calibration": {"sequential": sequential}}
    operator = bound(config, net, token_batches(count=3))
    operator.project(weights_of(operator), 0.5)
    assert len(seen) == 4  # the probe's input, then one per batch
    assert alive[-1] == 1  # the last batch's input alone; before: all three


def test_layers_reading_one_input_share_one_statistic(monkeypatch: pytest.MonkeyPatch) -> None:
    from compressor_plugins.posttrain import calibration

    made: list[int] = []
    original = calibration.LayerStatistics.__init__

    def init(self: Any, *args: Any) -> None:
        original(self, *args)
        made.append(1)

    monkeypatch.setattr(calibration.LayerStatistics, "__init__", init)
    config = {"kind": "wanda", "include": ["model.*", "lm_head.weight"]}
    operator = bound(config, llama(2), token_batches(), include=config["include"])
    groups = operator.probe(operator.model, operator.calibration_inputs()).groups(operator.targets)  # type: ignore[attr-defined]
    names = [[t.name.split(".", 2)[-1] for t in g.members] for g in groups[:4]]
    assert names == [
        ["0.self_attn.q_proj.weight", "0.self_attn.k_proj.weight", "0.self_attn.v_proj.weight"],
        ["0.self_attn.o_proj.weight"],
        ["0.mlp.gate_proj.weight", "0.mlp.up_proj.weight"],
        ["0.mlp.down_proj.weight"],
    ]
    operator.masks(weights_of(operator), 0.5)
    assert len(made) == len(groups) == 9  # 4 per block and the LM head


def test_block_mode_calibrates_a_block_on_its_dense_weights() -> None:
    net = llama(1)
    inputs = token_batches()
    norms: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):

            def hook(m: nn.Module, a: tuple[Any, ...], name: str = name) -> None:
                x = a[0].detach().reshape(-1, a[0].shape[-1]).double()
                norms[name] = norms.get(name, 0) + x.square().sum(0)

            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in inputs:
            net(**batch)
    for handle in handles:
        handle.remove()
    config = {"kind": "wanda", "calibration": {"sequential": "block"}}
    operator = bound(config, net, inputs, include=["model.layers.*"])
    masks = operator.masks(weights_of(operator), 0.5)
    exact = bound({"kind": "wanda"}, net, inputs, include=["model.layers.*"])
    sequential = exact.masks(weights_of(exact), 0.5)
    for target in operator.targets:
        w = target.param.detach().double()
        scores = w.abs() * norms[target.module_name].sqrt()[None, :]
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        expected = torch.zeros_like(w, dtype=torch.bool).scatter_(
            1, order[:, : w.shape[1] // 2], True
        )
        assert torch.equal(masks[target.name], expected), target.name
    assert any(not torch.equal(masks[n], sequential[n]) for n in masks)  # the test can tell


@pytest.mark.parametrize("offload", ["cpu"])
def test_offload_gives_the_same_weights(offload: str) -> None:
    results = []
    for setting in ("none", offload):
        net = llama(2)
        config = {"kind": "sparsegpt", "calibration": {"offload": setting}}
        operator = bound(config, net, token_batches())
        results.append(operator.compress(weights_of(operator), 0.5))  # type: ignore[attr-defined]
    for name, (value, _) in results[0].items():
        assert value.device == results[1][name][0].device == torch.device("cpu")
        if not torch.cuda.is_available():  # on CPU offloading moves nothing: bit for bit
            assert torch.equal(value, results[1][name][0])
        else:
            assert torch.allclose(value, results[1][name][0], atol=1e-4)


def test_the_lm_head_stays_dense_unless_named() -> None:
    net = llama(1)
    default = bound({"kind": "sparsegpt"}, net, token_batches())
    names = {t.name for t in default.targets}
    assert "lm_head.weight" not in names and len(names) == 7
    head = {"kind": "sparsegpt", "include": ["lm_head.weight"]}
    named = bound(head, net, token_batches(), include=head["include"])
    assert [t.name for t in named.targets] == ["lm_head.weight"]
    tied = bound({"kind": "wanda"}, gpt2(), token_batches())  # a head tied to the embedding
    assert "transformer.wte.weight" not in {t.name for t in tied.targets}
