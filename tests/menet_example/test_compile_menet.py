"""torch.compile: a compiled MENET trains with GB and LB; the weighting breaks no graph in it.

The weighting runs eagerly on the compiled model's outputs (GB's per-task
``torch.autograd.grad`` passes go through the compiled backward with
``retain_graph``). Checked here:

* :func:`torch._dynamo.explain` finds one graph and no graph break in MENET's
  forward (with and without channel attention, with ``return_features``);
* over several GB and LB training steps the model is compiled exactly once
  (``fullgraph=True`` with a backend that counts the graphs it receives): the
  weighting adds no graph break and no recompilation;
* ``train(TrainConfig(compile="aot_eager"))`` (compiled forward and backward, no C++
  toolchain needed) gives the weights and parameters of eager training;
* with ``inductor``, when a C++ compiler is present and inductor builds: one GB step
  matches eager. Building MENET's kernels takes about 45 s on two loaded cores, so
  this one runs only with ``MENET_TEST_INDUCTOR=1`` (``tests/test_compile.py``
  already trains an inductor-compiled convolutional model with GB and LB in CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mtlweight as mw
from menet.model import MENET
from menet.train import TrainConfig, build_losses, build_weighting, train, train_step

pytestmark = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(),  # type: ignore[attr-defined]
    reason="torch.compile is not supported here",
)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Each test compiles from scratch."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def keep_saved_activations() -> Any:
    """GB backpropagates through the compiled graph once per task (``retain_graph``):
    AOTAutograd must not donate the saved activations (``train`` does this itself)."""
    import torch._functorch.config as functorch_config

    return functorch_config.patch(donated_buffer=False)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: many times faster on a loaded two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CountingBackend:
    """A ``torch.compile`` backend that records every graph it is given, then runs it eagerly."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(
        self, gm: torch.fx.GraphModule, example_inputs: list[Tensor]
    ) -> Callable[..., Any]:
        self.graphs.append(gm)
        return gm.forward


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("features", [False, True])
def test_menet_forward_is_one_graph_without_breaks(attention: bool, features: bool) -> None:
    torch.manual_seed(0)
    net = MENET(blocks=2, channel_attention=attention).train()
    explanation = torch._dynamo.explain(net)(torch.rand(2, 3, 32, 32), return_features=features)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("weighting", ["gb", "lb"])
def test_training_steps_compile_the_model_once(weighting: str) -> None:
    torch.manual_seed(0)
    net = MENET(blocks=1, channel_attention=True)
    backend = CountingBackend()
    compiled = torch.compile(net, backend=backend, fullgraph=True)
    fns = build_losses()
    w = build_weighting(weighting, net, list(fns))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    stack = contextlib.ExitStack()
    stack.enter_context(keep_saved_activations())
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        clean = torch.rand(2, 3, 32, 32, generator=g)
        rainy = (clean + 0.2 * torch.rand(2, 3, 32, 32, generator=g)).clamp(0, 1)
        r = train_step(compiled, (rainy, clean), fns, w, opt)  # type: ignore[arg-type]
        assert sorted(r.weights) == ["edge", "pixel", "texture"]
        assert sum(r.weights.values()) == pytest.approx(2.0, abs=1e-5)  # GB, LB: T - 1
    stack.close()
    assert len(backend.graphs) == 1  # one graph, compiled once: no break, no recompilation


def _tiny(data: Path, out: Path, **kw: Any) -> TrainConfig:
    options: dict[str, Any] = dict(
        data=str(data), out=str(out), variant="shallow", patches="random", patch_size=32,
        patches_per_image=1, batch_size=2, steps=2, progress=False, device="cpu",
    )
    options.update(kw)
    return TrainConfig(**options)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["gb", "lb"])
def test_compiled_training_matches_eager_training(
    rain100l_folder: Path, tmp_path: Path, weighting: str
) -> None:
    import torch._functorch.config as functorch_config

    donated = functorch_config.donated_buffer
    eager = train(_tiny(rain100l_folder, tmp_path / "eager", weighting=weighting))
    compiled = train(
        _tiny(rain100l_folder, tmp_path / "compiled", weighting=weighting, compile="aot_eager")
    )
    assert functorch_config.donated_buffer == donated  # train's setting does not leak
    assert compiled.step == eager.step == 2
    assert eager.last is not None and compiled.last is not None
    for name in eager.last.weights:
        assert compiled.last.weights[name] == pytest.approx(eager.last.weights[name], abs=1e-4)
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert a.keys() == b.keys()  # the checkpointed model is the unwrapped one
    # Under compile the model is one autograd node whose inputs are all leaves, so GB's
    # per-task passes cover the graph and the update is assembled from them (no final
    # backward); the sums then round differently (~1e-8 relative, see
    # test_compiled_gradients_match_eager_gradients) and Adam's first steps, about lr
    # per step whatever the gradient's size, can turn that into up to 2 lr per step on a
    # parameter whose gradient is near zero.
    lr, steps = 1e-3, 2  # TrainConfig's default lr, and the steps of _tiny
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2 * lr * steps, msg=k)


@pytest.mark.parametrize("weighting", ["gb", "lb"])
def test_compiled_gradients_match_eager_gradients(weighting: str) -> None:
    """One step's gradients of every parameter: aot_eager-compiled MENET equals eager."""
    import torch._functorch.config as functorch_config

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = MENET(blocks=1, channel_attention=False)
        model = torch.compile(net, backend="aot_eager") if compiled else net
        fns = build_losses()
        w = build_weighting(weighting, net, list(fns))
        with functorch_config.patch(donated_buffer=False):
            out = model(x)
            w.backward({k: f(out, 0.9 * x) for k, f in fns.items()})
        grads.append({n: p.grad for n, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6 * float(g.abs().max()))


def test_compile_refuses_a_representation_inside_the_graph(rain100l_folder: Path) -> None:
    with pytest.raises(ValueError, match="compile cannot be combined with gb_shared"):
        _tiny(rain100l_folder, Path("unused"), compile="aot_eager", gb_shared="representation")


def _inductor_unavailable() -> str | None:
    if os.environ.get("MENET_TEST_INDUCTOR") != "1":
        return "inductor build of MENET is slow (~45 s); set MENET_TEST_INDUCTOR=1 to run it"
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "g++", "clang")):
        return "no C++ compiler on PATH for inductor"
    return None


def test_inductor_step_matches_eager() -> None:
    reason = _inductor_unavailable()
    if reason:
        pytest.skip(reason)
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    net = MENET(blocks=1, channel_attention=False)
    twin = MENET(blocks=1, channel_attention=False)
    twin.load_state_dict(net.state_dict())
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    results = []
    for model, compile_it in ((net, False), (twin, True)):
        fns = build_losses()
        w = mw.GradientBalance(shared=model.last_conv)
        # SGD, not Adam: Adam's first step is lr * sign(grad), which turns rounding noise
        # in a near-zero gradient into a full-size difference.
        opt = torch.optim.SGD(model.parameters(), 0.1)
        run: nn.Module = model
        if compile_it:
            run = torch.compile(model, backend="inductor")  # type: ignore[assignment]
        ctx = (
            inductor_config.patch(compile_threads=1) if compile_it else contextlib.nullcontext()
        )
        with ctx, keep_saved_activations():
            try:
                results.append(train_step(run, (x, y), fns, w, opt))
            except Exception as exc:  # a broken toolchain: not MENET's concern
                if "InductorError" in type(exc).__name__ or "CppCompileError" in repr(exc):
                    pytest.skip(f"inductor cannot build here: {type(exc).__name__}")
                raise
    for name in results[0].weights:
        assert results[1].weights[name] == pytest.approx(results[0].weights[name], abs=1e-4)
    for (k, a), b in zip(net.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
