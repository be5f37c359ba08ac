"""What a training loop relies on, for every strategy: a loss that reaches none of the shared
inputs is an error naming the task, evaluation calls are pure, heads get their plain gradients
by default, accumulation weights a whole optimizer step once, and keys, options and learned
weights are checked.

Each test failed before the fix it names. The trainer matrix (findings 1 and 2) is in
``tests/test_trainers.py`` and ``tests/test_total.py``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import _trainer_worker as worker
import pytest
import torch

import mtlweight as mw

STRATEGIES = worker.STRATEGIES


def _setup(name: str) -> tuple[worker.Net, mw.Weighting]:
    net = worker.Net()
    torch.manual_seed(3)
    return net, worker.build(name, net)


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    return x, torch.randn(8, 3, generator=generator, dtype=torch.float64) * 3


UNREACHED = r"no loss reaches .*allow_unreached|none of the 1 given inputs requires grad"
GRADIENT_LEVEL = [n for n in STRATEGIES if isinstance(_setup(n)[1], mw.GradientMethod)]


# ----------------------------------------------------- 4. detached losses train nothing
@pytest.mark.parametrize("name", GRADIENT_LEVEL)
def test_detached_features_raise_naming_the_tasks(name: str) -> None:
    net, weighting = _setup(name)
    x, y = _batch(0)
    features = net(x).detach()  # a stray .detach(): the trunk is reached by no loss
    losses = net.head_losses(features, y)
    representation = features if weighting.needs_representation else None
    for call in (weighting.backward, weighting.__call__):
        with pytest.raises(ValueError, match=UNREACHED):
            call(losses, representation=representation)
    assert weighting.step == 0 and not weighting.history
    assert all(p.grad is None for p in net.parameters())


def test_one_detached_task_is_named() -> None:
    net, weighting = _setup("upgrad")
    x, y = _batch(0)
    features = net(x)
    losses = net.head_losses(features, y)
    losses["b"] = net.head_losses(features.detach(), y)["b"]
    with pytest.raises(ValueError, match=r"UPGrad: the loss of task 'b' reaches none of the 2 "):
        weighting.backward(losses)


# ------------------------------------------- 3. evaluation calls change no training state
def _state(weighting: mw.Weighting) -> Any:
    return copy.deepcopy(weighting.state_dict())


def _same(got: Any, expected: Any) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, expected)
    elif isinstance(expected, dict):
        assert set(got) == set(expected)
        for key in expected:
            _same(got[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            _same(g, e)
    else:
        assert got == expected


def _train(net: worker.Net, weighting: mw.Weighting, seeds: range,
           evaluate: Callable[[], None] | None = None) -> None:
    opt = torch.optim.SGD([*net.parameters(), *weighting.parameters()], lr=0.05)
    for seed in seeds:
        opt.zero_grad()
        x, y = _batch(seed)
        losses, features = net.losses(x, y)
        representation = features if weighting.needs_representation else None
        weighting(losses, representation=representation).backward()
        opt.step()
        if evaluate is not None:
            evaluate()


CONTEXTS: dict[str, Callable[[mw.Weighting], contextlib.AbstractContextManager[Any]]] = {
    "no_grad": lambda w: torch.no_grad(),
    "inference_mode": lambda w: torch.inference_mode(),
    "eval": lambda w: _eval_mode(w),
}


@contextlib.contextmanager
def _eval_mode(weighting: mw.Weighting) -> Iterator[None]:
    weighting.eval()
    try:
        yield
    finally:
        weighting.train()


@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("name", STRATEGIES)
def test_evaluation_calls_are_pure(name: str, context: str) -> None:
    """Validation calls between training steps change nothing (FAMO and DWA moved)."""
    net, weighting = _setup(name)
    reference_net, reference = _setup(name)
    _train(reference_net, reference, range(3))

    def evaluate() -> None:
        x, y = _batch(100)
        state, step, history = _state(weighting), weighting.step, list(weighting.history)
        with CONTEXTS[context](weighting):
            losses, _ = net.losses(x, y)
            total = weighting(losses)
        assert weighting.step == step and list(weighting.history) == history
        _same(_state(weighting), state)
        current = weighting.weights
        if any(True for _ in weighting.parameters()):  # learned: at the parameters now,
            if weighting.step >= len(reference.history):  # which the next step uses
                return
            current = reference.history[weighting.step]
        expected = sum(w * losses[t].item() for t, w in current.items())
        assert total.item() == pytest.approx(expected, rel=1e-6)

    _train(net, weighting, range(3), evaluate)
    assert weighting.weights == reference.weights
    for p, q in zip(net.parameters(), reference_net.parameters(), strict=True):
        assert torch.equal(p, q)


def test_evaluation_before_training_uses_known_weights() -> None:
    x, y = _batch(0)
    for name, expected in (("fixed", (1.0, 0.5, 2.0)), ("lb", (1.0, 1.0, 1.0))):
        net, weighting = _setup(name)
        with torch.no_grad():
            losses, _ = net.losses(x, y)
            total = weighting(losses)
        assert total.item() == pytest.approx(
            sum(e * v.item() for e, v in zip(expected, losses.values(), strict=True))
        )
        assert weighting.step == 0
    net, uw = _setup("uncertainty")
    with torch.no_grad():
        uw.s.copy_(torch.tensor([0.0, 1.0, -1.0]))
        losses, _ = net.losses(x, y)
        total = uw(losses)
    weights = torch.exp(-torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64))
    expected = sum(w.item() * v.item() for w, v in zip(weights, losses.values(), strict=True))
    assert total.item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------ 5. heads get their plain gradients by default
# GB weights the losses (its paper); DB-MTL's heads get the plain gradient of sum_t log L_t
@pytest.mark.parametrize("name", [n for n in GRADIENT_LEVEL if n not in ("gb", "db_mtl")])
def test_heads_get_their_plain_gradients_by_default(name: str) -> None:
    """As the papers' code, TorchJD and LibMTL: no weight reverses or silences a head."""
    net, weighting = _setup(name)
    x, y = _batch(0)
    losses, features = net.losses(x, y)
    heads = list(net.heads.parameters())
    expected = torch.autograd.grad(sum(losses.values()), heads, retain_graph=True)
    representation = features if weighting.needs_representation else None
    weighting(losses, representation=representation).backward()
    for p, e in zip(heads, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-12)
    assert weighting.task_specific == "plain"


def test_a_negative_imtl_g_weight_no_longer_reverses_a_head() -> None:
    jac = torch.tensor([[1.5409961, -0.2934289, -2.1787894], [2.8421564, -5.4226117, -6.9929770],
                        [0.0806694, 0.1676053, -0.1438515]], dtype=torch.float64)
    theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    head = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def losses() -> list[torch.Tensor]:  # task 0 also trains the head: d L_0 / d head = 1
        return [theta @ jac[0] + head, theta @ jac[1], theta @ jac[2]]

    for mode, sign in (("plain", 1.0), ("weighted", -1.0)):
        imtl = mw.IMTLG(shared=[theta], **({} if mode == "plain" else {"task_specific": mode}))
        head.grad = None
        weights = imtl.backward(losses())
        assert weights["0"] < 0  # IMTL-G gives task 0 a negative weight here
        # plain heads descend L_0; the named option "weighted" climbs it, as before
        assert head.grad is not None and float(head.grad) * sign > 0


def test_gradient_balance_keeps_its_papers_weighted_total() -> None:
    _, gb = _setup("gb")
    assert gb.task_specific == "weighted"


# ------------------------------- 6. accumulation: once per optimizer step, every strategy
LOSS_LEVEL = [n for n in STRATEGIES if n not in GRADIENT_LEVEL]


@pytest.mark.parametrize("name", STRATEGIES)
def test_accumulation_weights_the_whole_step_once(name: str) -> None:
    """Two micro-batches (losses halved) give the whole batch's weights and update."""
    net, weighting = _setup(name)
    if weighting.needs_representation or not weighting.accumulable:
        with pytest.raises((TypeError, ValueError), match=r"accumulate|micro-batches"):
            x, y = _batch(0)
            weighting.accumulate(net.losses(x, y)[0])
        return
    reference_net, reference = _setup(name)
    for seed in range(3):
        x, y = _batch(seed)
        for part in (slice(0, 4), slice(4, 8)):
            losses, _ = net.losses(x[part], y[part])
            weighting.accumulate({t: v / 2 for t, v in losses.items()})
        weights = weighting.backward_accumulated()
        expected = reference.backward(reference_net.losses(x, y)[0])
        assert weighting.step == reference.step == seed + 1
        for t in worker.TASKS:
            assert weights[t] == pytest.approx(expected[t], rel=1e-6, abs=1e-9)
        for p, q in zip(net.parameters(), reference_net.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
        net.zero_grad()
        reference_net.zero_grad()


def test_accumulation_needs_micro_batches_first() -> None:
    with pytest.raises(RuntimeError, match="nothing was accumulated"):
        mw.LossBalance().backward_accumulated()


# --------------------------------------------------------------- 7. the smaller findings
def test_keys_that_are_the_same_as_strings_are_named() -> None:
    with pytest.raises(ValueError, match=r"the task names 1, '1' are the same as strings"):
        mw.LossBalance()({1: torch.tensor(1.0), "1": torch.tensor(2.0)})


def test_get_names_the_class_of_an_unknown_option() -> None:
    with pytest.raises(TypeError, match=r"mw.get\('gb'\) builds GradientBalance, which takes no "
                                        r"option 'c'; its options: .*task_specific"):
        mw.get("gb", shared=torch.nn.Linear(2, 2), c=0.5)
    assert mw.get("cagrad", shared=torch.nn.Linear(2, 2), c=0.5).c == 0.5  # a real option


def test_rlw_is_permutation_consistent() -> None:
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(3.0)}
    permuted = {k: losses[k] for k in ("c", "a", "b")}
    first, second = mw.get("rlw", seed=4), mw.get("rlw", seed=4)
    for _ in range(3):
        assert first(losses).item() == pytest.approx(second(permuted).item())
        assert first.weights == {k: second.weights[k] for k in losses}


def test_get_returns_a_weighting_that_accumulates() -> None:
    """``mw.get`` is typed ``-> Weighting``: accumulation is part of that type now."""
    assert callable(mw.Weighting.accumulate) and callable(mw.Weighting.backward_accumulated)


def test_upgrad_docstring_states_the_measured_difference() -> None:
    doc = mw.UPGrad.__doc__ or ""
    assert "10-30 %" in doc and "about :math:`10^{-4}` relative" not in doc


def test_learned_weights_outside_the_optimizer_warn() -> None:
    net, uw = _setup("uncertainty")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)  # uw.s forgotten
    x, y = _batch(0)
    with pytest.warns(UserWarning, match="never changed.*give weighting.parameters"):
        for _ in range(5):
            optimizer.zero_grad()
            uw(net.losses(x, y)[0]).backward()
            optimizer.step()
    trained_net, trained = _setup("uncertainty")
    optimizer = torch.optim.SGD([*trained_net.parameters(), *trained.parameters()], lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            optimizer.zero_grad()
            trained(trained_net.losses(x, y)[0]).backward()
            optimizer.step()
