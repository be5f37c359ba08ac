"""The gradient-level base classes: per-task gradients J (T x P) -> update direction d (P,)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlweight._base import Weighting, weighted_total
from mtlweight._validation import Losses, check_finite
from mtlweight.autograd import as_inputs
from mtlweight.distributed import all_reduce_mean, is_distributed, world_size
from mtlweight.gradient_level._inputs import (
    Accumulated,
    GraphCensus,
    SharedInputs,
    add_grad,
    backward_from_cut,
    cut_task_grads,
    flat,
    gram,
    graph_leaves,
    leaves_above,
    require_reached,
    shared_cut,
    split_columns,
    task_grads,
    weighted_sum,
)
from mtlweight.gradient_level._linear_gram import linear_taps, linear_task_grads
from mtlweight.gradient_level._task_grads import TaskGrads

__all__ = ["Combination", "GradientMethod", "GramWeighting", "TaskSpecific"]

TaskSpecific = Literal["weighted", "plain"]


@dataclass(frozen=True)
class Combination:
    """What a :class:`GradientMethod` makes of this step's per-task gradients.

    Attributes
    ----------
    weights
        ``(T,)`` float64: the coefficients :math:`w` of :math:`d = J^\\top w`.
    direction
        ``None`` when :math:`d = J^\\top w` (a linear combination of the rows:
        ``weighting(losses)`` works in ``"weighted"`` mode), else the ``(P,)``
        update itself, for methods whose :math:`d` is not such a combination
        (only ``.backward(losses)`` works; ``weights`` are then for logging,
        see :meth:`from_direction`).
    """

    weights: Tensor
    direction: Tensor | None = None

    @classmethod
    def from_direction(cls, jac: Tensor, gram: Tensor, direction: Tensor) -> Combination:
        r"""A ``direction`` with the weights :math:`w = \arg\min_w \lVert J^\top w - d \rVert`.

        :math:`w = G^{+} J d` (least squares, minimum norm), in float64.

        Examples
        --------
        >>> import torch
        >>> jac = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> Combination.from_direction(jac, jac.double() @ jac.double().T,
        ...                            torch.tensor([1.0, 1.0])).weights
        tensor([1.0000, 0.5000], dtype=torch.float64)
        """
        # J d in J's precision (a float64 copy of J would double the method's memory)
        projected = torch.mv(jac, direction.to(jac.dtype)).double().cpu().reshape(-1, 1)
        weights = torch.linalg.lstsq(gram, projected, driver="gelsd").solution.reshape(-1)
        return cls(weights, direction)


class _Replace:
    """Tensor hook that replaces the incoming gradient by a fixed tensor."""

    def __init__(self, value: Tensor) -> None:
        self.value = value

    def __call__(self, grad: Tensor) -> Tensor:
        return self.value.to(grad.dtype)


class GradientMethod(Weighting):
    r"""Base class of the methods that combine the per-task gradients of shared inputs.

    At each step the per-task gradients of the shared parameters :math:`\theta`
    (or of a shared representation) form the matrix

    .. math::

        J = \begin{bmatrix} \nabla_\theta L_1 & \cdots & \nabla_\theta L_T
            \end{bmatrix}^\top \in \mathbb{R}^{T \times P},
        \qquad G = J J^\top, \qquad d = \mathcal{A}(J, G, L)

    and a method (:meth:`combine`) turns them into the update direction
    :math:`d` of the shared inputs, usually a combination :math:`d = J^\top w`
    whose coefficients :math:`w` are reported as the weights.

    - ``task_specific="weighted"`` (default): ``weighting(losses)`` returns
      :math:`\sum_t \operatorname{sg}(w_t) L_t`, whose backward pass puts
      exactly :math:`d = J^\top w` on the shared inputs and
      :math:`\sum_t w_t \nabla L_t` on every other parameter (the task heads);
      ``weighting.backward(losses)`` gives the same gradients.
    - ``task_specific="plain"``: the shared inputs receive :math:`d` and every
      other parameter the plain gradient of :math:`\sum_t L_t`, as the official
      code of PCGrad, CAGrad, IMTL-G and Aligned-MTL does. No weighted total
      can do that: only ``weighting.backward(losses)`` is available and
      ``weighting(losses)`` raises :class:`TypeError`.

    ``backward`` accumulates into ``.grad`` like ``loss.backward()`` and returns
    the weights. :math:`J` costs one backward pass per task that stops at
    :math:`\theta`, and :math:`T P` numbers of memory: pick :math:`\theta`
    near the output (the last shared layer) or pass ``representation=``.
    The shared parameters are resolved at every step (a module gives the
    parameters that require grad now: freezing a layer just works). If no
    loss reaches the ``representation=`` tensor (a detached copy, an extra
    output of a compiled graph), the call raises :class:`ValueError` naming it.

    Under :mod:`torch.distributed` every rank uses the same :math:`w`,
    through :meth:`~mtlweight.Weighting.statistic`: for shared parameters
    :math:`J` is averaged across processes (one all-reduce of :math:`T P`
    numbers); for a representation, whose entries are each rank's own
    samples, the Gram matrices are averaged instead (and divided by the
    number of processes: those of the combined batch for mean losses over
    equal batches). The Gram matrix of the last step is ``statistics["gram"]``.

    Parameters
    ----------
    shared
        The shared parameters: a module (its trainable parameters) or an
        iterable of tensors. May be ``None`` if every call passes
        ``representation=``.
    task_specific
        ``"weighted"`` or ``"plain"`` (see above); ``None`` takes the
        method's default.
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Notes
    -----
    Subclasses implement :meth:`combine`; methods whose weights depend on the
    Gram matrix alone derive from :class:`GramWeighting` instead.
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        mode = "weighted" if task_specific is None else task_specific
        if mode not in ("weighted", "plain"):
            raise ValueError(f"task_specific must be 'weighted' or 'plain'; found {mode!r}")
        self.task_specific: TaskSpecific = mode
        # Not a state: the shared parameters belong to the user's model.
        self.shared = SharedInputs(shared)
        self._accumulated: Accumulated | None = None
        #: Compute the per-task gradients in one vectorised backward pass
        #: (``torch.autograd.grad(..., is_grads_batched=True)``) instead of ``T``
        #: (faster on CPU: the backward reads each weight once for all tasks), if
        #: ``True``. ``None``: try it at the first step and fall back to ``T``
        #: passes for good if ``torch.vmap`` cannot batch the graph. Off by
        #: default: a task's non-finite gradient can then turn another task's
        #: rows into NaN (``0 * inf``), so the error names the wrong task.
        self.batched: bool | None = False
        #: Take the per-task gradients of shared ``nn.Linear`` layers from their
        #: activations when the graph allows it (methods of ``G`` alone; see
        #: :mod:`~mtlweight.gradient_level._linear_gram`): the per-task passes skip the
        #: weight-gradient products and nothing of size ``T x P`` is formed. ``False``
        #: always takes the general path (same results up to rounding).
        self.linear_shortcut = True
        #: Assemble the update from the per-task passes where the graph allows it: the
        #: heads' gradients from those passes, and below the shared inputs (a cut into
        #: the layers under shared parameters, or the trunk under a ``representation=``)
        #: one backward pass from the combined gradients there, instead of backpropagating
        #: the whole total once more. Saves a pass over the losses and the shared layers;
        #: holds the ``T`` per-task gradients at the cut (``T`` times the activations
        #: there) until the update, and writes the ``.grad`` of the shared inputs and the
        #: heads directly, so hooks that autograd runs when it accumulates a gradient
        #: (``register_post_accumulate_grad_hook``) do not fire for those. ``False``
        #: always backpropagates the total once more with :math:`d` in place (every
        #: ``.grad`` written by autograd; same results up to rounding).
        self.assemble = True

    @abstractmethod
    def combine(self, jac: Tensor, gram: Tensor, values: Tensor) -> Combination:
        """The update of this step from the per-task gradients.

        Parameters
        ----------
        jac
            ``(T, P)`` per-task gradients, on the device, averaged across
            processes for shared parameters.
        gram
            ``(T, T)`` float64 CPU tensor, :math:`J J^\\top`, symmetric.
        values
            ``(T,)`` detached losses.
        """

    #: Whether :meth:`combine` needs :math:`J` itself: then each pass's shared gradients go
    #: into one ``(T, P)`` matrix as the passes run, so that they are held once.
    needs_matrix: bool = True

    #: Whether :meth:`combine` always returns a ``direction`` (not :math:`J^\\top w`):
    #: ``weighting(losses)`` then raises :class:`TypeError` before it computes anything.
    direction_only: bool = False

    def check_losses(self, names: list[str], values: Tensor) -> None:
        """Raise if this step's detached losses do not suit the method (before any backward)."""

    def reused_weights(self, names: list[str]) -> Tensor | None:
        """Weights to reuse at this step instead of combining (``None``: combine)."""
        return None

    def shared_parameters(self) -> list[Tensor]:
        """The shared tensors that require grad now (raises if there are none)."""
        return self.shared.resolve(type(self).__name__)

    # ------------------------------------------------------------------ API
    def forward(self, losses: Losses, *, representation: Tensor | None = None) -> Tensor:
        """Return :math:`\\sum_t \\operatorname{sg}(w_t) L_t` (``task_specific="weighted"``)."""
        if self.task_specific == "plain":
            name = type(self).__name__
            raise TypeError(
                f"{name}(task_specific='plain') gives the shared parameters the combined "
                "gradient and the task-specific ones the plain gradient of sum_t L_t, which no "
                f"weighted total can express: call {name}.backward(losses) instead of "
                f"{name}(losses).backward(), or build it with task_specific='weighted'"
            )
        if self.direction_only:  # before any state moves (issue 13)
            raise TypeError(self._no_total())
        return super().forward(losses, representation=representation)

    def _no_total(self) -> str:
        name = type(self).__name__
        return (
            f"{name}'s update is not a weighted sum of the task gradients, so no weighted "
            f"total gives it: call {name}.backward(losses) instead of {name}(losses)"
        )

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        reused = self.reused_weights(names)
        if reused is not None:
            return reused
        _, _, combination = self._solve(names, losses, values, representation)
        if combination.direction is not None:
            raise TypeError(self._no_total())
        return combination.weights.to(values)

    def backward(self, losses: Losses, *, representation: Tensor | None = None) -> dict[str, float]:
        """Backpropagate: :math:`d` on the shared inputs, the rest as ``task_specific`` says.

        Returns the weights (coefficients :math:`w` of :math:`d = J^\\top w`) by task.
        When the per-task passes to the shared parameters already cover the
        whole graph (the shared part is the whole trunk, only heads are left),
        they also collect the gradients of the other parameters and the update
        is assembled from them: no further backward pass. With trainable layers
        below the shared parameters (``shared`` the last layer), the passes also
        take the gradients at the edges into those layers (the *cut*), and only
        the graph below the cut is backpropagated, once, from their combination:
        the losses and the shared layers are walked ``T`` times, not ``T + 1``
        (graphs where a head's leaf is also used below the cut, a loss reaches
        no shared tensor, or one cut node lies below another take the general
        path). With a
        ``representation=`` whose graph above it holds only task heads (their
        leaves used nowhere below it), the passes to it also collect the heads'
        gradients, and only the trunk below it is backpropagated, from
        :math:`d`: the losses' graph is walked ``T`` times, not ``T + 1``.
        Otherwise the total is backpropagated once with :math:`d` in place of
        its gradient at the shared inputs.
        """
        fresh = self.tasks is None
        try:
            names, tensors, values = self._prepare(losses)
            weights = self.reused_weights(names)
            if weights is not None and self.task_specific == "weighted":
                self._record(names, weights.to(values))  # no per-task passes at all
                torch.autograd.backward(self._total(tensors, weights))
                return self._done(losses, representation, tensors)
            others = heads = census = cut = None
            resolved: list[Tensor] | None = None
            # DDP reduces in backward(): every .grad must come from it
            if self.assemble and not is_distributed():
                resolved = self._inputs(representation)
                if representation is None:
                    census = GraphCensus()
                    split = shared_cut(tensors, resolved, census)
                    if split is not None and not split.cut:
                        others = split.heads  # the shared tensors cover the whole trunk
                    elif split is not None and self.batched is False:
                        cut = split
                else:
                    heads = leaves_above(tensors, resolved)
            if cut is not None and resolved is not None:
                inputs = resolved
                grads, at_cut = cut_task_grads(
                    tensors, [*resolved, *cut.heads], cut.cut,
                    matrix=len(resolved) if self.needs_matrix else 0,
                )
            else:
                inputs, grads = self.jacobian(
                    names, tensors, representation, extra=others or heads or (),
                    inputs=resolved, assembled=others is not None,
                    keep_graph=heads is None and others is None, census=census,
                )
            direction: Tensor | None = None
            if weights is None:
                self.check_losses(names, values)
                combination = self._weigh(names, grads, len(inputs), representation is not None,
                                          values)
                weights, direction = combination.weights, combination.direction
        except Exception:
            if fresh:  # a failed first call must not fix the task names
                self.tasks = None
            raise
        weights = weights.to(values)
        self._record(names, weights)
        # With the update assembled the graph is gone: task 0's buffers can take the sums.
        pieces = self._pieces(weights, direction, inputs, grads,
                              in_place=others is not None or cut is not None)
        scale = weights if self.task_specific == "weighted" else torch.ones_like(weights)
        leaves = heads if representation is not None else others if cut is None else cut.heads
        if leaves is None:
            self._backward_with(tensors, scale, inputs, pieces)
            return self._done(losses, representation, tensors)
        # Assembled: the heads from the passes, then what lies below the shared inputs
        rest = grads.combine(scale, len(inputs), in_place=True)
        shared = [] if representation is not None else inputs  # d goes below a representation
        self._write(shared, pieces[: len(shared)], list(zip(leaves, rest, strict=True)))
        if cut is not None:  # the graph below the cut, from the combined gradients there
            backward_from_cut(cut.cut, at_cut, scale)
        elif representation is not None:  # the trunk below the representation, from d
            torch.autograd.backward(
                inputs, [p.view_as(t).to(t.dtype) for t, p in zip(inputs, pieces, strict=True)]
            )
        return self._done(losses, representation, tensors)

    def _done(
        self, losses: Losses, representation: Tensor | None, tensors: list[Tensor]
    ) -> dict[str, float]:
        if self._forward_hooks:
            self._fire_forward_hooks((losses,), {"representation": representation}, tensors)
        return self.weights

    def accumulate(self, losses: Losses) -> None:
        r"""Add one micro-batch's per-task gradients to the sums of this optimizer step.

        Gradient accumulation that weights once per optimizer step, on the
        gradients of the whole batch: for micro-batches :math:`k = 1..K`,

        .. math::

            J = \sum_k J^{(k)}, \qquad L_t = \sum_k L_t^{(k)}, \qquad
            d = \mathcal{A}(J, J J^\top, L)

        so with each micro-batch's mean losses divided by :math:`K` (as for
        plain accumulation with ``loss.backward()``) the weights and the update
        are exactly those of the full batch. Each call costs the ``T`` per-task
        backward passes, to the shared parameters *and* every other parameter
        the losses reach (so that the task-specific ones can be weighted too),
        frees the graph and writes no ``.grad``; :meth:`backward_accumulated`
        then weights and writes the gradients. Shared parameters only (the
        gradients of a ``representation=`` are per sample and cannot be summed
        over micro-batches). Under DDP run the micro-batches inside
        ``model.no_sync()``: the sums are averaged across processes at
        :meth:`backward_accumulated`.

        Examples
        --------
        >>> import torch, mtlweight as mw
        >>> theta = torch.nn.Parameter(torch.zeros(2))
        >>> mgda = mw.MGDA(shared=[theta])
        >>> for a in (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])):  # two micro-batches
        ...     mgda.accumulate([theta @ a / 2, theta @ torch.tensor([0.0, 2.0]) / 2])
        >>> {k: round(v, 4) for k, v in mgda.backward_accumulated().items()}
        {'0': 0.8, '1': 0.2}
        >>> theta.grad
        tensor([0.8000, 0.4000])
        """
        if self.needs_representation:
            raise ValueError(
                f"{type(self).__name__} takes the gradients with respect to a representation, "
                "which are per sample and cannot be summed over micro-batches: accumulate with "
                "a method on shared parameters (e.g. MGDA(shared=...))"
            )
        names, tensors, values = self._prepare(losses)
        if self._accumulated is None:
            self._accumulated = Accumulated(names)
        elif names != self._accumulated.names:
            raise ValueError(
                f"{type(self).__name__}.accumulate: this micro-batch has the tasks {names}; the "
                f"previous ones of this step had {self._accumulated.names}"
            )
        shared = self.shared_parameters()
        others = graph_leaves(tensors, shared)
        grads, _ = self._task_grads(tensors, [*shared, *others], keep_graph=False)
        self._accumulated.add(values, shared, others, grads.rows())

    def backward_accumulated(self) -> dict[str, float]:
        r"""Weight the accumulated gradients once and write them into ``.grad``; return the weights.

        The shared parameters get :math:`d`, the others
        :math:`\sum_t c_t \nabla L_t` (:math:`c = w` for ``"weighted"``, 1 for
        ``"plain"``), accumulated into ``.grad`` like ``loss.backward()``. The
        sums are cleared. See :meth:`accumulate`.
        """
        pending, self._accumulated = self._accumulated, None
        if pending is None or pending.values is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward_accumulated: nothing was accumulated; call "
                ".accumulate(losses) for each micro-batch first"
            )
        names, values = pending.names, pending.values
        rows = pending.rows
        if self.sync and is_distributed():
            rows = split_columns(self.statistic("jacobian", flat(rows)), pending.shared)
            del self.statistics["jacobian"]
        self.check_losses(names, values)
        weights = self.reused_weights(names)
        direction: Tensor | None = None
        grads = TaskGrads.of_rows(rows)
        if weights is None:
            combination = self._weigh(names, grads, len(rows), False, values)
            weights, direction = combination.weights, combination.direction
        weights = weights.to(values)
        self._record(names, weights)
        others = list(pending.others.values())
        if self.sync and is_distributed():
            others = [(leaf, all_reduce_mean(r)) for leaf, r in others]
        scale = weights if self.task_specific == "weighted" else torch.ones_like(weights)
        pieces = self._pieces(weights, direction, pending.shared, grads, in_place=False)
        self._write(pending.shared, pieces, [(leaf, weighted_sum(scale, r)) for leaf, r in others])
        return self.weights

    @staticmethod
    def _pieces(
        weights: Tensor,
        direction: Tensor | None,
        inputs: list[Tensor],
        grads: TaskGrads,
        *,
        in_place: bool,
    ) -> list[Tensor]:
        """:math:`d` cut into one tensor per shared input (the first targets of ``grads``)."""
        if direction is not None:
            return [
                piece.view_as(t)
                for t, piece in zip(
                    inputs, torch.split(direction, [t.numel() for t in inputs]), strict=True
                )
            ]
        return grads.combine(weights, 0, len(inputs), in_place=in_place)

    @staticmethod
    def _write(
        shared: list[Tensor], pieces: list[Tensor], others: list[tuple[Tensor, Tensor]]
    ) -> None:
        """Accumulate ``d`` into the shared ``.grad`` and their combinations into the others'."""
        for tensor, piece in zip(shared, pieces, strict=True):
            add_grad(tensor, piece)
        for leaf, grad in others:
            add_grad(leaf, grad)

    # -------------------------------------------------------------- helpers
    def _solve(
        self, names: list[str], losses: list[Tensor], values: Tensor, representation: Tensor | None
    ) -> tuple[list[Tensor], TaskGrads, Combination]:
        self.check_losses(names, values)
        inputs, grads = self.jacobian(names, losses, representation)
        combination = self._weigh(names, grads, len(inputs), representation is not None, values)
        return inputs, grads, combination

    def _weigh(
        self, names: list[str], grads: TaskGrads, count: int, per_sample: bool, values: Tensor
    ) -> Combination:
        """The combination from the gradients of the first ``count`` targets (``J`` built here)."""
        jac = grads.matrix(0, count)
        g = self._gram(names, gram(jac), per_sample)
        return self._checked(names, self.combine(jac, g, values))

    def _gram(self, names: list[str], g: Tensor, per_sample: bool, keep: bool = True) -> Tensor:
        """``G`` averaged across processes for a representation, symmetric, checked finite.

        Kept as ``statistics["gram"]`` unless ``keep`` is false (a diagonal only).
        """
        if per_sample and self.sync and is_distributed():
            # Each rank's columns are its own samples: Gram matrices add up over
            # samples. With mean losses over equal batches, the combined batch's
            # Gram matrix is the mean over ranks divided by their number.
            g = self.statistic("gram", g) / world_size()
        g = (g + g.T) / 2
        check_finite(names, g.diagonal().clamp_min(0.0).sqrt(), "gradient norm")
        if keep:
            self.statistics["gram"] = g
        else:
            self.statistics.pop("gram", None)
        return g

    def _checked(self, names: list[str], combination: Combination) -> Combination:
        weights = combination.weights
        if weights.shape != (len(names),):
            raise ValueError(
                f"{type(self).__name__}.combine returned weights of shape {tuple(weights.shape)}; "
                f"expected ({len(names)},), one per task"
            )
        check_finite(names, weights, "weight")
        return combination

    def jacobian(
        self,
        names: list[str],
        losses: list[Tensor],
        representation: Tensor | None,
        *,
        extra: Sequence[Tensor] = (),
        inputs: list[Tensor] | None = None,
        assembled: bool = False,
        keep_graph: bool | None = None,
        census: GraphCensus | None = None,
    ) -> tuple[list[Tensor], TaskGrads]:
        """The differentiated inputs and the per-task gradients of the inputs, then of ``extra``.

        One backward pass per task (or one batched pass, see :attr:`batched`),
        stopping at the ``representation`` or the shared parameters, averaged
        across processes for shared parameters. ``extra`` tensors (the other
        leaves, when the update is assembled) get their rows too, after the
        inputs', and the graph is then freed. ``assembled``: ``extra`` are all the other
        leaves (the update is assembled from these passes), which allows the shortcut
        for shared linear layers (:attr:`linear_shortcut`). ``keep_graph``: whether the
        passes keep the graph (default: unless there are ``extra`` tensors). ``census``: the
        graph as the walk that found ``extra`` saw it (spares the shortcut a second walk).
        """
        if assembled and representation is None and inputs is not None:
            found = self._linear_jacobian(losses, inputs, list(extra), census)
            if found is not None:
                return found
        per_sample = representation is not None
        inputs = self._inputs(representation) if inputs is None else inputs
        grads, reached = self._task_grads(
            losses, [*inputs, *extra], keep_graph=not extra if keep_graph is None else keep_graph,
            matrix=len(inputs) if self.needs_matrix else 0,
        )
        require_reached(self, reached, inputs, per_sample)
        if not per_sample and self.sync and is_distributed():
            count = len(inputs)
            reduced = self.statistic("jacobian", grads.matrix(0, count))
            shared = split_columns(reduced, inputs)  # views of the reduced J: no copy
            del self.statistics["jacobian"]  # T x P numbers: not kept between steps
            grads = TaskGrads.of_rows([*shared, *grads.rows(count)])
        return inputs, grads

    def _linear_jacobian(
        self,
        losses: list[Tensor],
        shared: list[Tensor],
        others: list[Tensor],
        census: GraphCensus | None = None,
    ) -> tuple[list[Tensor], TaskGrads] | None:
        """The per-task gradients of shared linear layers from their activations, if it applies.

        Only for methods of ``G`` alone, with the update assembled from the per-task
        passes, every shared tensor the weight or bias of an ``nn.Linear`` used once,
        one process and per-task passes (see :mod:`~mtlweight.gradient_level._linear_gram`);
        ``None`` otherwise, and the general path runs.
        """
        if not self.linear_shortcut or self.needs_matrix or self.batched or is_distributed():
            return None
        taps = linear_taps(losses, shared, census)
        if taps is None:
            return None
        grads, reached = linear_task_grads(losses, taps, shared, others)
        require_reached(self, reached, shared, False)
        return shared, grads

    def _task_grads(
        self, losses: list[Tensor], targets: list[Tensor], *, keep_graph: bool, matrix: int = 0
    ) -> tuple[TaskGrads, bool]:
        if self.batched is None:
            try:  # keeps the graph this once, so that T passes can follow
                found = task_grads(losses, targets, keep_graph=True, batched=True)
                self.batched = True
                return found
            except (RuntimeError, NotImplementedError):  # an op vmap cannot batch
                self.batched = False
        return task_grads(
            losses, targets, keep_graph=keep_graph, batched=self.batched, matrix=matrix
        )

    def _inputs(self, representation: Tensor | None) -> list[Tensor]:
        if representation is not None:
            return as_inputs(representation)
        name = type(self).__name__
        if self.needs_representation:
            raise ValueError(
                f"{name} takes the gradients with respect to a shared representation: call "
                f"it with representation=features (the output of the shared encoder)"
            )
        return self.shared.resolve(name)

    @staticmethod
    def _total(tensors: Sequence[Tensor], scale: Tensor) -> Tensor:
        return weighted_total(tensors, scale.tolist())

    def _backward_with(
        self, tensors: list[Tensor], scale: Tensor, inputs: list[Tensor], pieces: list[Tensor]
    ) -> None:
        """Backpropagate ``sum_t scale_t L_t`` with ``pieces`` of :math:`d` in place of its
        gradient at ``inputs``; everything downstream of them sees the plain gradients."""
        handles = [
            tensor.register_hook(_Replace(piece.view_as(tensor)))  # type: ignore[no-untyped-call]
            for tensor, piece in zip(inputs, pieces, strict=True)
        ]
        try:
            torch.autograd.backward(self._total(tensors, scale))
        finally:
            for handle in handles:
                handle.remove()

    def _fire_forward_hooks(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], tensors: list[Tensor]
    ) -> None:
        """Run the forward hooks for a ``backward`` call, with the weighted total as output."""
        with torch.no_grad():
            output = self._total(
                [t.detach() for t in tensors], torch.tensor(list(self._weights.values()))
            )
        for key, hook in list(self._forward_hooks.items()):
            if key in self._forward_hooks_with_kwargs:
                hook(self, args, kwargs, output)
            else:
                hook(self, args, output)

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"task_specific={self.task_specific!r}"]
        return ", ".join(p for p in parts if p)


class GramWeighting(GradientMethod):
    r"""Methods whose weights are a function of the Gram matrix alone.

    .. math::

        w = f(G, L), \qquad G = J J^\top, \qquad d = J^\top w

    Subclasses implement :meth:`gram_weights` only: a pure function from the
    ``(T, T)`` float64 CPU Gram matrix (and the detached losses) to the
    ``(T,)`` float64 weights.
    """

    @abstractmethod
    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        """Return the ``(T,)`` float64 weights from the ``(T, T)`` float64 CPU Gram matrix."""

    def combine(self, jac: Tensor, gram: Tensor, values: Tensor) -> Combination:
        return Combination(self.gram_weights(gram, values))

    needs_matrix = False  # J is never built: G comes from dot products

    #: Whether :meth:`gram_weights` reads the diagonal of ``G`` only (the norms, as GB):
    #: then the off-diagonal entries are not computed and are zero.
    diagonal_only: bool = False

    def _weigh(
        self, names: list[str], grads: TaskGrads, count: int, per_sample: bool, values: Tensor
    ) -> Combination:
        # G from dot products of the per-task gradients: J itself is never built
        g = grads.gram(0, count, diagonal_only=self.diagonal_only)
        # only the diagonal: not kept as statistics["gram"]
        g = self._gram(names, g, per_sample, keep=not self.diagonal_only)
        return self._checked(names, Combination(self.gram_weights(g, values)))
