"""The base class every weighting strategy derives from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight._engine.accumulate import Accumulated
from mtlweight._engine.grads import TaskGrads
from mtlweight._engine.update import weighted_total
from mtlweight._validation import Losses, check_min_tasks, loss_values, normalise_losses
from mtlweight.distributed import all_reduce_mean, is_distributed


class TaskMap:
    """This call's task order against the state's (:attr:`Weighting.tasks`).

    The one mapping of the library between the two orders.

    Examples
    --------
    >>> order = TaskMap(["b", "a"], ["a", "b"])
    >>> order.to_state(torch.tensor([2.0, 1.0])), order.to_call(torch.tensor([1.0, 2.0]))
    (tensor([1., 2.]), tensor([2., 1.]))
    """

    def __init__(self, names: list[str], tasks: list[str] | None) -> None:
        #: Positions in the state of this call's tasks (``None``: the same order).
        self.to_call_index: list[int] | None = None
        #: Positions in this call of the state's tasks (``None``: the same order).
        self.to_state_index: list[int] | None = None
        if tasks is not None and names != tasks:
            self.to_call_index = [tasks.index(n) for n in names]
            self.to_state_index = [names.index(t) for t in tasks]

    def to_state(self, per_task: Tensor, *, square: bool = False) -> Tensor:
        """A per-task tensor of this call (rows; and columns if ``square``) in the state's order."""
        index = self.to_state_index
        if index is None:
            return per_task
        return per_task[index][:, index] if square else per_task[index]

    def to_call(self, per_task: Tensor) -> Tensor:
        """A per-task tensor in the state's order back in this call's order."""
        return per_task if self.to_call_index is None else per_task[self.to_call_index]


class Weighting(nn.Module, ABC):
    r"""Base class of the loss-weighting strategies.

    A strategy turns the per-task losses :math:`L_1, \dots, L_T` of one
    training step into weights :math:`w_t` and returns the total

    .. math::

        L = \sum_{t=1}^{T} \operatorname{sg}(w_t)\, L_t

    where :math:`\operatorname{sg}` is stop-gradient: the weights are constants
    for the backward pass. Use it in place of ``loss.backward()``::

        total = weighting(losses)   # or weighting.backward(losses)
        total.backward()
        optimizer.step()

    It is an :class:`torch.nn.Module`, so it moves with ``.to(device)``, saves
    and restores with ``state_dict`` (so a resumed run continues identically),
    and supports forward hooks.

    The shared work happens here, once: task names are normalised (a dict
    keeps its keys, a list/tuple is named ``"0"``, ``"1"``, ...), every loss is
    checked (a scalar, finite), the weights of each call are kept in
    :attr:`weights` and the bounded :attr:`history`, and the per-step
    statistics a strategy computes (loss values, gradient norms) go through
    :meth:`statistic`, the one place where they are averaged across processes
    under :mod:`torch.distributed`.

    Parameters
    ----------
    tasks
        Optional task names. When given, every call must use exactly these
        names; stateful strategies fix them at their first call anyway.
    history_size
        How many past weight vectors :attr:`history` keeps (oldest dropped).
    sync
        Average the per-step statistics across processes when
        :mod:`torch.distributed` is initialised, so that every rank computes
        the same weights (default ``True``).

    Notes
    -----
    Subclasses implement :meth:`compute_weights`. Class attribute
    ``min_tasks`` is the smallest number of tasks a strategy accepts.
    Strategies with per-task state derive from :class:`Stateful` (their task
    names are fixed at the first call); :attr:`needs_representation` tells
    generic training code that a strategy must be called with
    ``representation=``.
    """

    min_tasks: int = 1
    #: Which of :func:`mtlweight.get`'s context options (``"shared"``, ``"tasks"``) the
    #: constructor takes: ``get`` passes those, and only those, on.
    context_options: tuple[str, ...] = ()
    _why_min_tasks: str = ""
    #: Whether :meth:`compute_weights` reads the detached loss values. ``False`` (Fixed)
    #: lets a CPU call skip building them: ``values`` is then an empty CPU tensor.
    reads_values: bool = True

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        *,
        history_size: int = 10_000,
        sync: bool = True,
    ) -> None:
        super().__init__()
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1; found {history_size}")
        self.tasks: list[str] | None = None if tasks is None else [str(t) for t in tasks]
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task names must be unique; found {self.tasks}")
        self.history_size = history_size
        self.history: deque[dict[str, float]] = deque(maxlen=history_size)
        self.sync = sync
        self.step = 0
        self.statistics: dict[str, Tensor] = {}
        self._weights: dict[str, float] = {}

    # ----------------------------------------------------------------- API
    @property
    def weights(self) -> dict[str, float]:
        """Weights of the last call, by task name, as plain floats."""
        return dict(self._weights)

    def __call__(self, losses: Losses, *, representation: Tensor | None = None) -> Tensor:
        """Run :meth:`forward` (a training call), or :meth:`evaluate` when evaluating.

        A call is an *evaluation* under :func:`torch.no_grad`, :func:`torch.inference_mode`
        or after ``weighting.eval()`` (Lightning's validation loop does all of these): it
        returns the weighted total with the current weights and changes nothing.
        """
        if self.training and torch.is_grad_enabled():
            total: Tensor = super().__call__(losses, representation=representation)
            return total
        return self.evaluate(losses)

    def evaluate(self, losses: Losses) -> Tensor:
        r""":math:`\sum_t w_t L_t` with the current weights; no step, history or state moves.

        What a validation step logs: no gradient is taken, no statistic is
        all-reduced (ranks may see different numbers of validation batches), no
        random number is drawn. The current weights are those of the last
        training call (:attr:`weights`); before the first one, each is 1, except
        where a strategy knows them without a call (``Fixed``: its weights;
        uncertainty weighting, IMTL-L: from their parameters).

        Examples
        --------
        >>> import torch, mtlweight as mw
        >>> lb = mw.LossBalance()
        >>> _ = lb({"a": torch.tensor(1.0), "b": torch.tensor(3.0)})
        >>> lb.weights, lb.step
        ({'a': 0.75, 'b': 0.25}, 1)
        >>> with torch.no_grad():
        ...     lb({"a": torch.tensor(2.0), "b": torch.tensor(2.0)})
        tensor(2.)
        >>> lb.weights, lb.step
        ({'a': 0.75, 'b': 0.25}, 1)
        """
        names, values = normalise_losses(losses)
        Weighting._check_tasks(self, names)  # the names as configured; none are fixed here
        return weighted_total(values, self.current_weights(names))

    def current_weights(self, names: list[str]) -> list[float]:
        """The weights an evaluation call uses for ``names`` (see :meth:`evaluate`)."""
        return [self._weights.get(n, 1.0) for n in names]

    def forward(self, losses: Losses, *, representation: Tensor | None = None) -> Tensor:
        """Return :math:`\\sum_t \\operatorname{sg}(w_t) L_t` for this step's ``losses``.

        Parameters
        ----------
        losses
            A dict of task name -> scalar tensor, or a list/tuple of scalar tensors.
        representation
            A shared intermediate tensor, for strategies that take gradients with
            respect to it (ignored by the others).
        """
        fresh = self.tasks is None
        try:
            names, values, detached = self._prepare(losses)
            weights = self.compute_weights(names, values, detached, representation=representation)
            if weights.requires_grad:
                weights = weights.detach()
        except Exception:
            if fresh:  # a failed first call must not fix the task names
                self.tasks = None
            raise
        self._record(names, weights)
        return weighted_total(values, list(self._weights.values()))

    def _prepare(self, losses: Losses) -> tuple[list[str], list[Tensor], Tensor]:
        """The checks every call starts with; returns names, losses and detached values.

        The detached values are stacked in float32 (float64 if any loss is).
        Stateful strategies fix their task names here at their first call
        (:meth:`forward` undoes that if the call then fails).
        """
        names, values = normalise_losses(losses)
        self._check_tasks(names)
        check_min_tasks(names, self.min_tasks, type(self).__name__, self._why_min_tasks)
        detached = loss_values(names, values, needed=self.reads_values,
                               synced=self.sync and is_distributed())
        return names, values, detached

    def task_map(self, names: list[str]) -> TaskMap:
        """This call's task order against :attr:`tasks`, the order the state is kept in."""
        return TaskMap(names, self.tasks)

    #: Whether :meth:`accumulate` applies: the weights are a function of the loss values
    #: (and the state), so that those of the summed micro-batch losses are the step's.
    accumulable: bool = True
    _why_not_accumulable: str = ""

    def accumulate(self, losses: Losses) -> None:
        r"""Add one micro-batch's per-task gradients to the sums of this optimizer step.

        Gradient accumulation that weights once per optimizer step, from the whole
        step: for micro-batches :math:`k = 1..K` the losses
        :math:`L_t = \sum_k L_t^{(k)}` and the gradients
        :math:`\nabla L_t = \sum_k \nabla L_t^{(k)}` are summed, and
        :meth:`backward_accumulated` weights them once (the state moves once) and
        writes :math:`\sum_t w_t \nabla L_t` into ``.grad``. With each micro-batch's
        mean losses divided by :math:`K` (as for plain accumulation) the weights and
        the update are exactly those of the whole batch. Each call costs ``T``
        backward passes (one per task, to every parameter the losses reach) and
        holds ``T`` gradients per parameter until the step; it frees the graph and
        writes no ``.grad``. Under DDP run the micro-batches inside
        ``model.no_sync()``: the sums are averaged across processes at
        :meth:`backward_accumulated`. Gradient methods weight the summed Jacobian
        (:meth:`mtlweight.GradientMethod.accumulate`). Strategies whose weights are
        trained through the total (uncertainty weighting, IMTL-L) or need this
        step's gradient norms (GradNorm) raise :class:`TypeError` saying why.

        Examples
        --------
        >>> import torch, mtlweight as mw
        >>> theta = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
        >>> lb = mw.LossBalance()
        >>> for x in (torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])):  # two micro-batches
        ...     lb.accumulate({"a": theta[0] * x[0] / 2, "b": theta[1] * x[1] / 2})
        >>> lb.backward_accumulated(), lb.step  # the whole batch: L_a = L_b = 2
        ({'a': 0.5, 'b': 0.5}, 1)
        >>> theta.grad
        tensor([1., 1.])
        """
        if not self.accumulable:
            raise TypeError(
                f"{type(self).__name__} cannot accumulate micro-batches: "
                f"{self._why_not_accumulable}"
            )
        names, tensors, values = self._prepare(losses)
        pending: Accumulated | None = self.__dict__.get("_pending")
        if pending is None:
            pending = self.__dict__["_pending"] = Accumulated(names)
        elif names != pending.names:
            raise ValueError(
                f"{type(self).__name__}.accumulate: this micro-batch has the tasks {names}; the "
                f"previous ones of this step had {pending.names}"
            )
        if not values.numel():  # a strategy that does not read them (Fixed)
            values = torch.tensor([v.item() for v in tensors], dtype=torch.float64)
        pending.add_pass(tensors, values, [], batched=False)

    def backward_accumulated(self) -> dict[str, float]:
        """Weight the accumulated micro-batches once and write ``.grad``; return the weights.

        See :meth:`accumulate`. The sums are cleared.
        """
        pending: Accumulated | None = self.__dict__.pop("_pending", None)
        if pending is None or pending.values is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward_accumulated: nothing was accumulated; call "
                ".accumulate(losses) for each micro-batch first"
            )
        names, values = pending.names, pending.values
        summed = [v.reshape(()) for v in values.unbind()]
        weights = self.compute_weights(names, summed, values).detach()
        self._record(names, weights.to(values))
        distributed = self.sync and is_distributed()
        pending.apply(TaskGrads([[] for _ in names], owned=False), weights, None, plain=False,
                      reduce=all_reduce_mean if distributed else None)
        return self.weights

    def backward(
        self,
        losses: Losses,
        *,
        representation: Tensor | None = None,
        backward_fn: Callable[[Tensor], object] | None = None,
    ) -> dict[str, float]:
        """Weight ``losses``, backpropagate the total and return the weights used.

        Equivalent to ``self(losses, representation=...).backward()``; gradients
        accumulate into ``.grad`` as with ``loss.backward()``. ``backward_fn``: the
        function that backpropagates the total instead of ``Tensor.backward``, for
        trainers that must run the backward pass themselves (Lightning's
        ``self.manual_backward``, Accelerate's ``accelerator.backward``): under DDP
        that is where they reduce the gradients.
        """
        total = self(losses, representation=representation)
        if backward_fn is None:
            total.backward()  # type: ignore[no-untyped-call]
        else:
            backward_fn(total)
        return self.weights

    @abstractmethod
    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        """Return the weights, shape ``(T,)``, for this step.

        ``losses`` are the checked loss tensors (with their graphs), ``values``
        their detached values stacked in float32 (float64 if any loss is).
        """

    def statistic(self, name: str, value: Tensor) -> Tensor:
        """Record a per-step statistic, averaged across processes; return it.

        This is the single place where strategies keep what they measure
        (``"loss"``, ``"grad_norm"``, ...). Under an initialised
        :mod:`torch.distributed` process group with ``sync=True``, the value is
        all-reduced (mean, see :func:`mtlweight.distributed.all_reduce_mean`)
        so that every rank computes identical weights. It is a collective:
        every rank must record the same statistics, in the same order, with the
        same shapes. Average what one process would compute on the combined
        batch (losses, gradient vectors), not a nonlinear function of it (a
        norm of a per-rank gradient), to make a run on ``R`` processes equal a
        run on one.
        """
        value = all_reduce_mean(value) if self.sync else value.detach()
        self.statistics[name] = value
        return value


    # ------------------------------------------------------------ helpers
    @property
    def needs_representation(self) -> bool:
        """Whether every call must pass ``representation=`` (MGDA-UB); ``False`` here."""
        return False

    @property
    def stateful(self) -> bool:
        """Whether the strategy keeps per-task state (derives from :class:`Stateful`)."""
        return isinstance(self, Stateful)

    def _check_tasks(self, names: list[str]) -> None:
        if self.tasks is None:
            return
        missing = [t for t in self.tasks if t not in names]
        if missing:
            raise ValueError(
                f"task {missing[0]!r} is missing from the losses: {type(self).__name__} was "
                f"configured with tasks {self.tasks}; found {names}"
            )
        unknown = [t for t in names if t not in self.tasks]
        if unknown:
            raise ValueError(
                f"unknown task {unknown[0]!r}: {type(self).__name__} was configured with tasks "
                f"{self.tasks}; found {names}"
            )

    def _record(self, names: list[str], weights: Tensor) -> None:
        self._record_floats(dict(zip(names, weights.tolist(), strict=True)))

    def _record_floats(self, recorded: dict[str, float]) -> None:
        """Keep this step's weights (a dict of its own), count the step, extend the history."""
        # plain attributes, set past nn.Module.__setattr__ (its parameter and buffer
        # checks cost more than the rest of a Fixed step's bookkeeping)
        self.__dict__["_weights"] = recorded
        self.__dict__["step"] = self.step + 1
        self.history.append(recorded)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "strategy": type(self).__name__,
            "tasks": self.tasks,
            "step": self.step,
            "weights": dict(self._weights),
            "history": [dict(h) for h in self.history],
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or not {"tasks", "step", "history"} <= set(state):
            raise ValueError(
                f"{type(self).__name__}: the state to load is not a weighting state "
                f"(expected keys tasks, step, history; found {type(state).__name__})"
            )
        saved = state.get("strategy", type(self).__name__)  # absent in older checkpoints
        if saved != type(self).__name__:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the state was saved by {saved}, not by "
                f"{type(self).__name__}; build a {saved} to load it (mw.get(name) with the name "
                "it was trained with)"
            )
        self.tasks = None if state["tasks"] is None else list(state["tasks"])
        self.step = int(state["step"])
        self._weights = dict(state.get("weights", {}))
        self.history = deque((dict(h) for h in state["history"]), maxlen=self.history_size)

    def extra_repr(self) -> str:
        return "" if self.tasks is None else f"tasks={self.tasks}"


class Stateful(Weighting):
    """A strategy with per-task state: its task names are fixed at its first call.

    The state (a buffer, a parameter, an extra state entry) is kept in the
    order of :attr:`~Weighting.tasks`; later calls must use the same names, in
    any order (:meth:`~Weighting.task_map` maps them). Derive from it next to
    the strategy's other base, e.g. ``class NashMTL(GramWeighting, Stateful)``.
    """

    def _check_tasks(self, names: list[str]) -> None:
        if self.tasks is None:
            self.tasks = list(names)
        super()._check_tasks(names)


class Seeded(Weighting):
    """A strategy that draws from its own CPU generator, ``self.generator``.

    The generator's state is part of ``state_dict`` (extra state), so a
    resumed run draws what an uninterrupted one would. Derive from it next to
    the strategy's other base, e.g. ``class GradDrop(Seeded, GradientMethod)``.
    """

    generator: torch.Generator

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
