"""The GradientMethod base: the two conventions, the hooks, what a method is given."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import TinyMultiTask, per_task_gradients
from numpy.typing import NDArray
from torch import Tensor, nn

import mtlweight as mw


class Recorder(mw.GramWeighting):
    """Fixed coefficients ``0.5, 1.5, 2.5, ...``; records what ``gram_weights`` receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, Any] = {}
        self.statistic_names: list[str] = []

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        self.seen = {"gram": gram.numpy(), "gram_tensor": gram, "values": values}
        return torch.arange(gram.shape[0], dtype=torch.float64) + 0.5

    def statistic(self, name: str, value: Tensor) -> Tensor:
        self.statistic_names.append(name)
        return super().statistic(name, value)


def grads_of(params: list[nn.Parameter]) -> NDArray[np.float64]:
    """The ``.grad`` of ``params`` flattened and concatenated (zeros for ``None``)."""
    return np.concatenate(
        [
            (torch.zeros_like(p) if p.grad is None else p.grad).double().reshape(-1).numpy()
            for p in params
        ]
    )


def trunk_and_heads(model: TinyMultiTask) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    return list(model.trunk.parameters()), [
        p for t in model.tasks for p in model.head(t).parameters()
    ]


def test_gram_weights_gets_the_gram_matrix_and_the_losses(model: TinyMultiTask) -> None:
    trunk, _ = trunk_and_heads(model)
    reference = per_task_gradients(model.losses, trunk)
    jac = np.stack(list(reference.values()))
    recorder = Recorder(model.trunk)
    losses = model.losses()
    recorder(losses)
    gram = recorder.seen["gram"]
    assert recorder.seen["gram_tensor"].dtype == torch.float64
    assert recorder.seen["gram_tensor"].device.type == "cpu"
    assert gram.dtype == np.float64 and gram.shape == (3, 3)
    np.testing.assert_array_equal(gram, gram.T)
    np.testing.assert_allclose(gram, jac @ jac.T, rtol=1e-5)
    torch.testing.assert_close(recorder.statistics["gram"], torch.from_numpy(gram))
    torch.testing.assert_close(
        recorder.seen["values"], torch.stack([v.detach() for v in losses.values()])
    )
    assert recorder.weights == {"pixel": 0.5, "edge": 1.5, "texture": 2.5}


def test_the_jacobian_is_not_kept(model: TinyMultiTask) -> None:
    """Under DDP ``statistic`` averages J across processes (test_distributed checks that every
    rank gets the same weights); in one process J is not copied into a statistic at all."""
    recorder = Recorder(model.trunk)
    recorder(model.losses())
    assert recorder.statistic_names == []
    assert "jacobian" not in recorder.statistics and "gram" in recorder.statistics


def test_a_per_sample_jacobian_is_not_averaged(model: TinyMultiTask) -> None:
    """Rows of a representation's Jacobian are each rank's own samples: only the Gram
    matrix may be averaged across processes (test_distributed checks it under DDP)."""
    recorder = Recorder()
    step = model.step()
    recorder(step.losses, representation=step.representation)
    assert "jacobian" not in recorder.statistic_names


@pytest.mark.parametrize("representation", [False, True])
def test_weighted_and_plain_give_the_shared_parameters_the_same_gradient(
    model: TinyMultiTask, representation: bool
) -> None:
    trunk, heads = trunk_and_heads(model)
    results = {}
    for mode in ("weighted", "plain"):
        model.zero_grad(set_to_none=True)
        step = model.step()
        weighting = Recorder(None if representation else model.trunk, task_specific=mode)
        weighting.backward(
            step.losses, representation=step.representation if representation else None
        )
        results[mode] = grads_of(trunk), grads_of(heads)
    np.testing.assert_allclose(results["weighted"][0], results["plain"][0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(results["weighted"][1], results["plain"][1])


def test_plain_mode_through_a_representation(model: TinyMultiTask) -> None:
    """The trunk gets (dz/dtheta)^T J_z^T w = sum_t w_t grad L_t; the heads the plain sum."""
    trunk, heads = trunk_and_heads(model)
    per_trunk = per_task_gradients(model.losses, trunk)
    per_heads = per_task_gradients(model.losses, heads)
    recorder = Recorder(task_specific="plain")
    step = model.step()
    weights = recorder.backward(step.losses, representation=step.representation)
    expected = sum(w * per_trunk[n] for n, w in weights.items())
    np.testing.assert_allclose(grads_of(trunk), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads_of(heads), sum(per_heads.values()), rtol=1e-5, atol=1e-7)


def test_plain_mode_accumulates_and_removes_its_hooks(model: TinyMultiTask) -> None:
    params = list(model.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    recorder = Recorder(model.trunk, task_specific="plain")
    recorder.backward(model.losses())
    first = grads_of(params)
    model.zero_grad(set_to_none=True)
    recorder.backward(model.losses())
    np.testing.assert_allclose(first, grads_of(params) + 1, rtol=1e-6, atol=1e-5)
    # the hooks are gone: a plain backward afterwards gives the plain gradient
    model.zero_grad(set_to_none=True)
    sum(model.losses().values()).backward()  # type: ignore[union-attr]
    reference = per_task_gradients(model.losses, params)
    np.testing.assert_allclose(grads_of(params), sum(reference.values()), rtol=1e-5, atol=1e-5)


def test_call_in_plain_mode_returns_a_total_with_the_update(model: TinyMultiTask) -> None:
    """Plain heads: ``weighting(losses).backward()`` gives what ``.backward(losses)`` gives."""
    params = list(model.parameters())
    Recorder(model.trunk, task_specific="plain").backward(model.losses())
    expected = grads_of(params)
    model.zero_grad(set_to_none=True)
    recorder = Recorder(model.trunk, task_specific="plain")
    total = recorder(model.losses())
    assert recorder.step == 1
    values = [v.item() for v in model.losses().values()]
    weighted = sum(w * v for w, v in zip(recorder.weights.values(), values, strict=True))
    np.testing.assert_allclose(total.item(), weighted, rtol=1e-6)
    total.backward()  # type: ignore[no-untyped-call]
    np.testing.assert_allclose(grads_of(params), expected, rtol=1e-5, atol=1e-5)


def test_backward_returns_the_weights(model: TinyMultiTask) -> None:
    for mode in ("weighted", "plain"):
        recorder = Recorder(model.trunk, task_specific=mode)
        returned = recorder.backward(model.losses())
        assert returned == recorder.weights == {"pixel": 0.5, "edge": 1.5, "texture": 2.5}
        assert recorder.history[-1] == returned and recorder.step == 1


def test_representation_overrides_shared(model: TinyMultiTask) -> None:
    recorder = Recorder(model.trunk)
    step = model.step()
    assert step.representation is not None
    recorder(step.losses, representation=step.representation)
    per_z = np.stack(
        [
            torch.autograd.grad(v, step.representation, retain_graph=True)[0]
            .double()
            .reshape(-1)
            .numpy()
            for v in step.losses.values()
        ]
    )
    np.testing.assert_allclose(recorder.seen["gram"], per_z @ per_z.T, rtol=1e-5)


def test_mgda_ub_needs_a_representation(model: TinyMultiTask) -> None:
    with pytest.raises(ValueError, match=r"MGDAUB takes the gradients .* representation=features"):
        mw.MGDAUB(model.trunk)(model.losses())


def test_half_precision_parameters() -> None:
    """bfloat16 gradients: the Gram is accumulated in float32, the hook returns bfloat16."""
    theta = nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16))
    direction = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.bfloat16)
    for mode in ("weighted", "plain"):
        theta.grad = None
        weights = mw.MGDA([theta], task_specific=mode).backward(
            [(theta * theta).sum(), (theta * direction).sum()]
        )
        assert theta.grad is not None and theta.grad.dtype == torch.bfloat16
        assert all(np.isfinite(list(weights.values())))


def test_the_graph_survives_the_call(model: TinyMultiTask) -> None:
    losses = model.losses()
    total = mw.MGDA(model.trunk)(losses)
    total.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("mode", ["weighted", "plain"])
def test_forward_hooks_fire_in_both_modes(model: TinyMultiTask, mode: str) -> None:
    recorder = Recorder(model.trunk, task_specific=mode)
    seen: list[dict[str, float]] = []
    recorder.register_forward_hook(lambda module, args, output: seen.append(module.weights))
    recorder.backward(model.losses())
    assert seen == [recorder.weights] and recorder.step == 1


class Sign(mw.GradientMethod):
    """A direction that is not a combination of the rows: the sign of the summed gradient."""

    def combine(self, jac: Tensor, gram: Tensor, values: Tensor) -> mw.Combination:
        return mw.Combination.from_direction(jac, gram, jac.sum(0).sign())


def test_a_direction_goes_to_the_shared_parameters(model: TinyMultiTask) -> None:
    trunk, heads = trunk_and_heads(model)
    per_trunk = per_task_gradients(model.losses, trunk)
    per_heads = per_task_gradients(model.losses, heads)
    weights = Sign(model.trunk, task_specific="plain").backward(model.losses())
    np.testing.assert_array_equal(grads_of(trunk), np.sign(sum(per_trunk.values())))
    np.testing.assert_allclose(grads_of(heads), sum(per_heads.values()), rtol=1e-5, atol=1e-7)
    # the logged weights are the least-squares coefficients of d in the rows of J
    jac = np.stack(list(per_trunk.values()))
    w_ref = np.linalg.lstsq(jac.T, np.sign(jac.sum(0)), rcond=None)[0]
    np.testing.assert_allclose(list(weights.values()), w_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["weighted", "plain"])
def test_a_direction_comes_back_as_a_total(model: TinyMultiTask, mode: str) -> None:
    """A direction that is no weighted sum still has a total to backpropagate (issue 26)."""
    params = list(model.parameters())
    Sign(model.trunk, task_specific=mode).backward(model.losses())
    expected = grads_of(params)
    model.zero_grad(set_to_none=True)
    Sign(model.trunk, task_specific=mode)(model.losses()).backward()
    np.testing.assert_allclose(grads_of(params), expected, rtol=1e-5, atol=1e-5)


class _Wrong(mw.GramWeighting):
    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        return torch.ones(gram.shape[0] + 1, dtype=torch.float64)


def test_weights_of_the_wrong_shape_are_named(model: TinyMultiTask) -> None:
    with pytest.raises(ValueError, match=r"_Wrong.combine returned weights of shape \(4,\)"):
        _Wrong(model.trunk)(model.losses())


class TwoLayers(nn.Module):
    """Two trunk layers and three heads; ``calls`` records each backward pass through layer 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lower, self.upper = nn.Linear(4, 5), nn.Linear(5, 5)
        self.heads = nn.ModuleList([nn.Linear(5, 1) for _ in range(3)])
        self.x, self.y = torch.randn(6, 4), torch.randn(3, 6)
        self.calls: list[tuple[int, ...]] = []

    def losses(self) -> list[Tensor]:
        a = self.lower(self.x)
        a.register_hook(lambda g: self.calls.append(tuple(g.shape)))
        z = torch.tanh(self.upper(torch.tanh(a)))
        return [
            (h(z).squeeze(1) - y).square().mean() for h, y in zip(self.heads, self.y, strict=True)
        ]


@pytest.mark.parametrize("batched", [False, True])
def test_no_extra_backward_when_the_shared_part_is_the_whole_trunk(batched: bool) -> None:
    """The update is assembled from the per-task passes (T of them, or one batched)."""
    net = TwoLayers()
    gb = mw.GradientBalance([*net.lower.parameters(), *net.upper.parameters()])
    gb.batched = batched
    gb.backward(net.losses())
    assert len(net.calls) == (1 if batched else 3)
    # with only the upper layer shared, the layer below needs the final backward pass
    net.calls.clear()
    upper = mw.GradientBalance(net.upper)
    upper.batched = batched
    upper.backward(net.losses())
    assert len(net.calls) == 1


@pytest.mark.parametrize("name", ["gb", "mgda", "pcgrad", "aligned_mtl", "imtl_g"])
@pytest.mark.parametrize("mode", ["weighted", "plain"])
@pytest.mark.parametrize("shared", ["all", "upper"])
def test_assembled_batched_and_hooked_updates_agree_with_per_task_gradients(
    name: str, mode: str, shared: str
) -> None:
    net = TwoLayers()
    trunk = [*net.lower.parameters(), *net.upper.parameters()]
    inputs = trunk if shared == "all" else list(net.upper.parameters())
    heads = [p for h in net.heads for p in h.parameters()]
    below = [] if shared == "all" else list(net.lower.parameters())

    def losses() -> dict[str, Tensor]:
        return {str(i): v for i, v in enumerate(net.losses())}

    per_in = per_task_gradients(losses, inputs)
    per_heads = per_task_gradients(losses, heads)
    per_below = per_task_gradients(losses, below) if below else {}
    for batched in (False, True):
        net.zero_grad(set_to_none=True)
        weighting = mw.get(name, shared=inputs, task_specific=mode)
        assert isinstance(weighting, mw.GradientMethod)
        weighting.batched = batched
        weights = weighting.backward(losses())
        w = np.array([weights[str(i)] for i in range(3)])
        c = w if mode == "weighted" else np.ones(3)
        jac = np.stack([per_in[str(i)] for i in range(3)])
        np.testing.assert_allclose(grads_of(inputs), w @ jac, rtol=1e-5, atol=1e-7)
        heads_jac = np.stack([per_heads[str(i)] for i in range(3)])
        np.testing.assert_allclose(grads_of(heads), c @ heads_jac, rtol=1e-5, atol=1e-7)
        if below:  # a layer below shared parameters is a task-specific one for the method
            below_jac = np.stack([per_below[str(i)] for i in range(3)])
            np.testing.assert_allclose(grads_of(below), c @ below_jac, rtol=1e-4, atol=1e-6)
