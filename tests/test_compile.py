"""torch.compile: a compiled conv model trains with GB and LB, with the weighting outside it.

The weighting runs in eager mode on the compiled model's outputs: GB's
``torch.autograd.grad`` passes go through the compiled backward (``retain_graph``)
before ``total.backward()``. The checks:

* no graph break and no recompilation inside the model over several GB/LB steps
  (``fullgraph=True`` with a backend that counts the graphs it is given, and
  ``torch._dynamo.explain``);
* with ``aot_eager`` (compiled forward *and* backward graphs, no C++ toolchain
  needed) training gives the same weights and parameters as eager training;
* with ``inductor`` the same, when a C++ compiler is present and inductor builds;
  skipped otherwise, with the reason.

Two things a user of GB (or of a gradient-level method) with torch.compile must know,
both shown here: turn off AOTAutograd's donated buffers (:func:`retain_graph_friendly`),
and take a ``representation`` from a graph boundary (:func:`split`), not from the
outputs of one whole-model graph, which no loss reaches.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mtlweight as mw
import mtlweight.functional as MF

STEPS = 3
TASKS = ("pixel", "edge", "texture")
GRADIENT_METHODS = [n for n in ("pcgrad", "mgda") if n in mw.available()]
"""Gradient-level methods trained through a compiled model too (when registered)."""


class ConvNet(nn.Module):
    """Two 3x3 convolutions (the shared body) and a last 3x3 convolution (GB's ``shared``)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the features ``(B, 8, H, W)`` and the output ``x + head`` ``(B, 3, H, W)``."""
        features = self.body(x)
        return features, x + self.head(features)


def data(step: int) -> tuple[Tensor, Tensor]:
    """A fixed batch ``(2, 3, 8, 8)`` of rainy and clean images for ``step``."""
    generator = torch.Generator().manual_seed(step)
    clean = torch.rand(2, 3, 8, 8, generator=generator)
    return clean + 0.3 * torch.rand(2, 3, 8, 8, generator=generator), clean


def task_losses(output: Tensor, target: Tensor) -> dict[str, Tensor]:
    """MENET's three losses: pixel MSE, edge-aware and texture matching (computed eagerly)."""
    return {
        "pixel": nn.functional.mse_loss(output, target),
        "edge": MF.edge_aware_loss(output, target),
        "texture": MF.texture_matching_loss(output, target),
    }


def make_weighting(name: str, net: ConvNet) -> mw.Weighting:
    """``"gb"`` (on the last convolution), ``"gb-representation"``, or a registry name."""
    if name == "gb-representation":
        return mw.GradientBalance()
    if name == "lb":
        return mw.LossBalance()
    return mw.get(name, shared=net.head)  # gb and the gradient-level methods


Compiler = Callable[[ConvNet], Callable[..., Any]]
"""Turns the model into what the training loop calls (its parameters unchanged)."""


def whole(backend: Any) -> Compiler:
    """Compile the whole model as one graph (``fullgraph=True``: a graph break is an error)."""
    return lambda net: torch.compile(net, backend=backend, fullgraph=True)


def split(backend: Any) -> Compiler:
    """Compile the body and the head separately, so that the features cross a graph boundary.

    This is how to use GB with a ``representation`` and a compiled model: a tensor
    returned by a compiled graph next to the outputs computed from it is a sibling
    output of the graph's autograd node, not an input of those outputs, so no loss
    reaches it. Here the head's graph takes the features as its input.
    """

    def compile_parts(net: ConvNet) -> ConvNet:
        # In place: the compiled wrappers hold the same parameters.
        net.body = torch.compile(net.body, backend=backend, fullgraph=True)  # type: ignore[assignment]
        net.head = torch.compile(net.head, backend=backend, fullgraph=True)  # type: ignore[assignment]
        return net

    return compile_parts


def train(name: str, compile_model: Compiler | None) -> dict[str, Any]:
    """Train :class:`ConvNet` for :data:`STEPS` Adam steps; return the weights and parameters."""
    net = ConvNet()
    model: Callable[..., Any] = net if compile_model is None else compile_model(net)
    weighting = make_weighting(name, net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    weights = []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        x, y = data(step)
        features, output = model(x)
        representation = features if name == "gb-representation" else None
        weighting.backward(task_losses(output, y), representation=representation)
        weights.append([weighting.weights[t] for t in TASKS])
        optimizer.step()
    params = [p.detach().clone() for p in net.parameters()]
    return {"weights": torch.tensor(weights), "params": params}


def assert_same_training(got: dict[str, Any], expected: dict[str, Any], name: str) -> None:
    torch.testing.assert_close(
        got["weights"], expected["weights"], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}"
    )
    for i, (a, b) in enumerate(zip(got["params"], expected["params"], strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name}, parameter {i}")


@contextlib.contextmanager
def retain_graph_friendly() -> Iterator[None]:
    """Turn off AOTAutograd's donated buffers, which forbid ``retain_graph=True``.

    A compiled backward is built at its first call; when that call is a plain
    ``backward()`` (a step with LB or Fixed, a warm-up), the backward may reuse
    ("donate") saved buffers and then refuses every later ``retain_graph=True``
    call: GB's ``torch.autograd.grad`` passes and the gradient-level methods fail
    with "compiled with non-empty donated buffers". Set
    ``torch._functorch.config.donated_buffer = False`` before compiling a model
    that such a strategy will train.
    """
    config = importlib.import_module("torch._functorch.config")
    if not hasattr(config, "donated_buffer"):  # older PyTorch: no donated buffers
        yield
        return
    with config.patch(donated_buffer=False):
        yield


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: tiny tensors gain nothing from more, and on a loaded
    machine OpenMP threads waiting for each other make every operation slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Skip where torch.compile is unsupported; start and end with empty compile caches."""
    if not torch._dynamo.eval_frame.is_dynamo_supported():
        pytest.skip(f"torch.compile is not supported here (Python {sys.version.split()[0]})")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_model_is_one_graph() -> None:
    """``torch._dynamo.explain``: the model itself compiles to one graph, no break."""
    explanation = torch._dynamo.explain(ConvNet())(data(0)[0])
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_weighting_adds_no_graph_break_or_recompilation() -> None:
    """One graph for the model, compiled once, over several steps of GB, GB on features, LB.

    ``fullgraph=True`` turns any graph break into an error; the counting backend
    sees every graph dynamo hands over, so a recompilation (for another strategy,
    step or model instance) would add one. Dynamo's graph runs eagerly here, so
    training must equal eager training.
    """
    graphs: list[torch.fx.GraphModule] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable[..., Any]:
        graphs.append(gm)
        return gm.forward

    for name in ("gb", "gb-representation", "lb"):
        result = train(name, whole(counting))
        assert len(graphs) == 1, f"{name}: {len(graphs)} graphs compiled for the model; expected 1"
        assert_same_training(result, train(name, None), name)
    convolutions = [n for n in graphs[0].graph.nodes if "conv" in str(n.target)]
    assert len(convolutions) == 3, graphs[0].code  # the whole model is in the graph


@pytest.mark.slow
def test_aot_eager_training_matches_eager() -> None:
    """Compiled forward and backward graphs (AOTAutograd): GB and LB train as in eager mode.

    LB runs first, so the compiled backward is built by a plain ``backward()`` and
    GB's ``retain_graph=True`` passes must then work with it (see
    :func:`retain_graph_friendly`). GB with a representation uses :func:`split`.
    The gradient-level methods that are registered take the same path as GB.
    """
    with retain_graph_friendly():
        for name in ("lb", "gb", *GRADIENT_METHODS):
            assert_same_training(train(name, whole("aot_eager")), train(name, None), name)
        got = train("gb-representation", split("aot_eager"))
        assert_same_training(got, train("gb-representation", None), "gb-representation")


def test_gb_rejects_the_features_returned_next_to_the_outputs_of_a_compiled_model() -> None:
    """The features returned by a whole-model compiled graph are reached by no loss.

    GB would silently weight every task ``1 - 1/T``; it must raise and say why.
    """
    with pytest.raises(ValueError, match="representation"):
        train("gb-representation", whole("aot_eager"))


def _inductor_unavailable() -> str:
    """Why inductor cannot run here ('' when it may)."""
    if not any(shutil.which(c) for c in ("cc", "gcc", "g++", "clang", "c++")):
        return "no C/C++ compiler on PATH: inductor cannot build CPU kernels"
    return ""


@pytest.mark.slow
@pytest.mark.skipif(bool(_inductor_unavailable()), reason=_inductor_unavailable())
def test_inductor_training_matches_eager() -> None:
    """An inductor-compiled model trains with GB and LB as in eager mode (compiled once).

    Kernels are built in this process (``compile_threads=1``): no pool of compile
    workers is started, which on two cores is faster and leaves no process behind.
    """
    inductor_config = importlib.import_module("torch._inductor.config")
    with retain_graph_friendly(), inductor_config.patch(compile_threads=1):
        for name in ("gb", "lb"):
            expected = train(name, None)
            try:
                got = train(name, whole("inductor"))
            except Exception as error:
                if type(error).__name__ in {"BackendCompilerFailed", "InductorError"}:
                    pytest.skip(f"inductor cannot build the model here: {error!s:.300}")
                raise
            assert_same_training(got, expected, name)


def _every_strategy() -> list[str]:
    """Every registered name that trains :class:`ConvNet` from one call site."""
    skip = {"fixed", "mgda_ub"}  # fixed needs its weights, MGDA-UB a representation
    return [n for n in mw.available() if n not in skip]


@pytest.mark.slow
@pytest.mark.parametrize("name", _every_strategy())
def test_every_strategy_trains_a_compiled_model_as_in_eager_mode(name: str) -> None:
    """aot_eager (compiled forward and backward graphs): each strategy's training equals eager.

    Seeded strategies (RLW, PCGrad, GradDrop) draw from PyTorch's global generator when no
    seed is given, so both runs start from the same global seed.
    """

    def run(compiler: Compiler | None) -> dict[str, Any]:
        torch.manual_seed(0)
        net = ConvNet()
        model: Callable[..., Any] = net if compiler is None else compiler(net)
        weighting = mw.get(name, shared=net.head, tasks=list(TASKS))
        extra = [p for p in weighting.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam([*net.parameters(), *extra], lr=1e-2)
        weights = []
        for step in range(STEPS):
            optimizer.zero_grad(set_to_none=True)
            x, y = data(step)
            _, output = model(x)
            weighting.backward(task_losses(output, y))
            weights.append([weighting.weights[t] for t in TASKS])
            optimizer.step()
        return {"weights": torch.tensor(weights),
                "params": [p.detach().clone() for p in net.parameters()]}

    with retain_graph_friendly():
        assert_same_training(run(whole("aot_eager")), run(None), name)
