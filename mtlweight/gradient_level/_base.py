"""The gradient-level base classes: per-task gradients J (T x P) -> update direction d (P,)."""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, Literal

from torch import Tensor, nn

from mtlweight._base import Weighting
from mtlweight._engine.plans import Combination
from mtlweight._engine.targets import SharedInputs
from mtlweight._engine.update import backward_total
from mtlweight._validation import Losses, check_finite
from mtlweight.gradient_level._engine_steps import EngineSteps
from mtlweight.gradient_level._micro_batches import MicroBatches
from mtlweight.gradient_level._totals import Totals

TaskSpecific = Literal["weighted", "plain"]


class GradientMethod(EngineSteps, MicroBatches, Totals, Weighting):
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

    - ``task_specific="plain"`` (default, except GradientBalance): the shared
      inputs receive :math:`d` and every other parameter (the task heads) the
      plain gradient of :math:`\sum_t L_t`, as the methods' official code,
      TorchJD and LibMTL do: a negative or zero weight never turns a head's own
      update into ascent or silence. No weighted total can do that:
      ``weighting(losses)`` returns a total of the same value whose backward
      pass writes exactly these gradients (a custom autograd function,
      :func:`~mtlweight._total.update_total`), so a trainer that backpropagates
      the loss itself (Lightning, the Hugging Face ``Trainer``, Accelerate) gets
      them too, each ``.grad`` accumulated once (DDP's hooks see the final one).
    - ``task_specific="weighted"`` (the former default, GradientBalance's):
      ``weighting(losses)`` returns :math:`\sum_t \operatorname{sg}(w_t) L_t`,
      whose backward pass puts exactly :math:`d = J^\top w` on the shared inputs
      and :math:`\sum_t w_t \nabla L_t` on every other parameter.

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
        mode = self.default_task_specific if task_specific is None else task_specific
        if mode not in ("weighted", "plain"):
            raise ValueError(f"task_specific must be 'weighted' or 'plain'; found {mode!r}")
        self.task_specific: TaskSpecific = mode
        # Not a state: the shared parameters belong to the user's model.
        self.shared = SharedInputs(shared)
        self._accumulated = None

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

    context_options = ("shared",)

    #: Whether :meth:`combine` needs :math:`J` itself: then each pass's shared gradients go
    #: into one ``(T, P)`` matrix as the passes run, so that they are held once.
    needs_matrix: bool = True

    #: Whether :meth:`combine` reads the diagonal of ``G`` only (the norms, as GB): then
    #: the off-diagonal entries are not computed and are zero.
    diagonal_only: bool = False

    #: Whether :meth:`combine` always returns a ``direction`` (not :math:`J^\\top w`);
    #: ``weighting(losses)`` then returns an :func:`~mtlweight._total.update_total`.
    direction_only: bool = False

    #: What the task-specific parameters get when ``task_specific`` is not given: the
    #: plain gradients, as the methods' papers and official code, TorchJD and LibMTL do.
    #: GradientBalance, a loss weighting in its paper, keeps ``"weighted"``.
    default_task_specific: TaskSpecific = "plain"

    def check_losses(self, names: list[str], values: Tensor) -> None:
        """Raise if this step's detached losses do not suit the method (before any backward)."""

    def reused_weights(self, names: list[str]) -> Tensor | None:
        """Weights to reuse at this step instead of combining (``None``: combine)."""
        return None

    def shared_parameters(self) -> list[Tensor]:
        """The shared tensors that require grad now (raises if there are none)."""
        return self.shared.resolve(type(self).__name__)

    # ------------------------------------------------------------------ API
    def _no_total(self) -> str:
        name = type(self).__name__
        return (
            f"{name}'s update is not a weighted sum of the task gradients, so no weighted "
            f"total gives it: call {name}.backward(losses) instead of {name}(losses)"
        )

    def backward(
        self,
        losses: Losses,
        *,
        representation: Tensor | None = None,
        backward_fn: Callable[[Tensor], object] | None = None,
    ) -> dict[str, float]:
        """Backpropagate: :math:`d` on the shared inputs, the rest as ``task_specific`` says.

        Returns the weights (coefficients :math:`w` of :math:`d = J^\\top w`) by task.
        The per-task gradients and the update come from the backward plan that
        :meth:`plan` chooses for the graph of this call (see
        :mod:`mtlweight._engine.plans`): the general one backpropagates the total
        once more with :math:`d` in place of its gradient at the shared inputs;
        the others assemble the update from the per-task passes where the graph
        allows it (:attr:`assemble`), with the same results up to rounding. With
        ``backward_fn`` (a trainer's ``manual_backward`` or ``accelerator.backward``) the
        total of :meth:`forward` is handed to it instead: every ``.grad`` then comes from
        that function, where the trainer reduces the gradients under DDP.
        """
        if backward_fn is not None:
            backward_fn(self(losses, representation=representation))
            return self.weights
        fresh = self.tasks is None
        try:
            names, tensors, values = self._prepare(losses)
            self._check_reached(names, tensors, representation)
            reused = self.reused_weights(names)
            if reused is not None and self.task_specific == "weighted":
                self._record(names, reused.to(values))  # no per-task passes at all
                backward_total(tensors, reused.tolist())
                return self._after_backward(losses, representation, tensors)
            plan = self.plan(tensors, representation, update=True)
            combine = functools.partial(self._combine, names, values, reused, plan.settings)
            plan.run(combine, plain=self.task_specific == "plain")
        except Exception:
            if fresh:  # a failed first call must not fix the task names
                self.tasks = None
            raise
        return self._after_backward(losses, representation, tensors)

    def on_matrices(
        self, names: list[str], jac: Tensor | None, gram: Tensor, values: Tensor
    ) -> Combination:
        """The method on matrices: this step's combination from :math:`J` and :math:`G`.

        No autograd: the method's maths alone (and its state, which moves), as
        :meth:`backward` applies it. ``jac`` may be ``None`` for the methods that
        do not need it (:attr:`needs_matrix` false). Raises if the weights are not
        one finite number per task.

        Examples
        --------
        >>> import torch, mtlweight as mw
        >>> mgda = mw.MGDA(shared=[torch.zeros(1, requires_grad=True)])
        >>> mgda.on_matrices(["a", "b"], None, torch.tensor([[1.0, 0.0], [0.0, 4.0]]).double(),
        ...            torch.ones(2)).weights
        tensor([0.8000, 0.2000], dtype=torch.float64)
        """
        combination = self.combine(jac, gram, values)  # type: ignore[arg-type]
        weights = combination.weights
        if weights.shape != (len(names),):
            raise ValueError(
                f"{type(self).__name__}.combine returned weights of shape {tuple(weights.shape)}; "
                f"expected ({len(names)},), one per task"
            )
        check_finite(names, weights, "weight")
        return combination

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
