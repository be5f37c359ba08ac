r"""Instance-wise weighting: the Gram matrix of per-sample losses from one backward pass.

When loss :math:`L_n` depends on sample :math:`n` of the batch alone (a model
that treats samples independently: no batch normalisation in training mode),
one backward pass of :math:`\sum_n L_n` gives, for every layer, the gradient
of each :math:`L_n` with respect to that sample's outputs. For a layer
:math:`y = A W^\top` (a linear layer over ``L`` positions, a convolution over
its ``L`` output positions with :math:`A` the unfolded input patches; the bias
is a column of ones in :math:`A`), the per-sample gradient is
:math:`\nabla_W L_n = D_n^\top A_n`, so

.. math::

    G_{mn} = \sum_{\text{layers}} \langle D_m^\top A_m,\ D_n^\top A_n \rangle_F
           = \sum_{\text{layers}} \big\langle D_m D_n^\top,\ A_m A_n^\top \big\rangle_F,
    \qquad \sum_n w_n \nabla_W L_n = \Big(\sum_n w_n D_n\Big)^{\!\top}\! A

where :math:`D_n = \partial L_n / \partial y_n` (``L x d_out``). With one
position (an MLP), :math:`G` is :math:`\sum (D D^\top) \odot (A A^\top)`: memory
:math:`O(N^2)` plus the activations, and no per-sample gradient is ever
formed. With many positions (convolutions), whichever is cheaper: the
:math:`L \times L` products, or the layer's per-sample gradients
(``N x d_out x d_in``, one layer at a time). Parameters of other modules
(normalisation layers, embeddings, grouped convolutions) take a documented
fallback: their per-sample gradients from one backward pass per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from mtlweight._engine.passes import task_pass

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(
            module.padding, tuple)
    return False


def _patches(module: nn.Module, x: Tensor) -> Tensor:
    """``(N, L, d_in)``: the rows :math:`A_n` the layer multiplies by :math:`W^\\top`."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1])
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    one, zero = ((1,), (0,)) if isinstance(module, nn.Conv1d) else ((), ())
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)  # (N, C, 1, L): a 2-d convolution with a 1 x k kernel
    cols = F.unfold(x, (*one, *module.kernel_size), dilation=(*one, *module.dilation),
                    padding=(*zero, *module.padding), stride=(*one, *module.stride))
    return cols.transpose(1, 2)


def layer_gram(a: Tensor, d: Tensor, *, ghost: bool | None = None) -> Tensor:
    r"""``(N, N)``: :math:`\langle D_m^\top A_m, D_n^\top A_n\rangle_F` of ``a``, ``d``.

    ``a`` is ``(N, L, p)`` and ``d`` ``(N, L, q)``.

    ``ghost``: through the ``L x L`` products :math:`\langle D_m D_n^\top, A_m A_n^\top\rangle`
    (``True``), or the per-sample products :math:`D_n^\top A_n` (``False``); by default
    whichever takes fewer operations (the ghost products only up to :math:`2^{24}` entries).
    """
    count, positions, p = a.shape
    q = d.shape[2]
    if positions == 1 and ghost is not False:
        return (d[:, 0] @ d[:, 0].T) * (a[:, 0] @ a[:, 0].T)
    pairs = count * count * positions * positions  # entries of the ghost products
    if ghost is None:
        cheaper = pairs * (p + q) < count * positions * p * q + count * count * p * q
        ghost = cheaper and pairs <= 2**24
    if ghost:
        aa = torch.einsum("mip,njp->minj", a, a)
        dd = torch.einsum("miq,njq->minj", d, d)
        return (aa * dd).sum((1, 3))
    per_sample = torch.bmm(d.transpose(1, 2), a).reshape(count, -1)  # (N, q p)
    return per_sample @ per_sample.T


class InstanceGram:
    r"""The Gram matrix of ``N`` per-sample losses without their Jacobian, and the update.

    .. math::

        G = J J^\top \in \mathbb{R}^{N \times N}, \qquad
        J_{n} = \nabla_\theta L_n, \qquad \theta \leftarrow \text{grad} = J^\top w

    Forward hooks on the ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` layers of
    ``module`` keep each call's input; :meth:`gram` runs one backward pass of
    :math:`\sum_n L_n` to the layers' outputs and assembles :math:`G` layer by
    layer (see the module's notes), and :meth:`backward` writes
    :math:`J^\top w` into the parameters' ``.grad`` (added, as ``backward`` does)
    without a second pass. A layer called several times adds its calls'
    positions. Parameters elsewhere in ``module`` (normalisation layers,
    embeddings, grouped convolutions) get their per-sample gradients from one
    backward pass per sample: exact, but ``N`` times slower.

    The model must treat samples independently: :math:`L_n` depends on
    sample ``n`` alone (what TorchJD's ``autogram`` calls ``batch_dim=0``).
    Batch normalisation in training mode breaks this, and :math:`G` is then not
    the Gram matrix of the per-sample gradients.

    Parameters
    ----------
    module
        The model whose trainable parameters the losses are differentiated in.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> model = torch.nn.Linear(3, 1)
    >>> gram_path = mw.InstanceGram(model)
    >>> x, y = torch.randn(4, 3), torch.randn(4, 1)
    >>> losses = ((model(x) - y) ** 2).squeeze(1)  # one loss per sample
    >>> upgrad = mw.UPGrad(shared=model)
    >>> weights = gram_path.backward(losses, upgrad)  # instance-wise UPGrad
    >>> weights.shape, model.weight.grad.shape
    (torch.Size([4]), torch.Size([1, 3]))
    >>> gram_path.remove()
    """

    def __init__(self, module: nn.Module) -> None:
        self.layers = [m for m in module.modules()
                       if _supported(m) and any(p.requires_grad for p in m.parameters(False))]
        covered = {id(p) for m in self.layers for p in m.parameters(False)}
        self.others = [p for p in module.parameters() if p.requires_grad and id(p) not in covered]
        self._records: list[tuple[nn.Module, Tensor, Tensor]] = []  # layer, input, output
        self._handles = [m.register_forward_hook(self._keep) for m in self.layers]
        self._pending: list[tuple[nn.Module, Tensor, Tensor]] | None = None
        self._other_grads: Tensor | None = None

    def _keep(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        if torch.is_grad_enabled() and output.requires_grad:
            self._records.append((module, args[0].detach(), output))

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._records.clear()

    def gram(self, losses: Tensor) -> Tensor:
        """``(N, N)`` float64 Gram matrix of the ``(N,)`` per-sample ``losses`` (graph freed).

        Uses the inputs kept since the last :meth:`gram` or :meth:`backward`.
        """
        if losses.dim() != 1:
            raise ValueError(f"InstanceGram expects one loss per sample, shape (N,); "
                             f"found {tuple(losses.shape)}")
        records, self._records = self._records, []
        count = losses.shape[0]
        edges = [get_gradient_edge(out) for _, _, out in records]
        found = task_pass([losses.sum()], [], keep_graph=bool(self.others),
                          edges=edges).at_edges[0] if edges else []
        total = torch.zeros(count, count, dtype=torch.float64, device=losses.device)
        by_layer: dict[int, list[tuple[Tensor, Tensor]]] = {}
        pending: list[tuple[nn.Module, Tensor, Tensor]] = []
        for (layer, x, out), delta in zip(records, found, strict=True):
            if delta is None:
                continue
            if x.shape[0] != count or out.shape[0] != count:
                raise ValueError(f"{type(layer).__name__} saw a batch of {x.shape[0]} samples; "
                                 f"the losses have {count}")
            a = _patches(layer, x)
            if layer.bias is not None:
                a = torch.cat([a, torch.ones_like(a[..., :1])], dim=2)
            d = delta.reshape(count, delta.shape[1], -1).transpose(1, 2) if not isinstance(
                layer, nn.Linear) else delta.reshape(count, -1, delta.shape[-1])
            by_layer.setdefault(id(layer), []).append((a, d))
            pending.append((layer, a, d))
        for pairs in by_layer.values():
            a = torch.cat([p[0] for p in pairs], dim=1)
            d = torch.cat([p[1] for p in pairs], dim=1)
            total += layer_gram(a, d).double()
        self._pending = pending
        self._other_grads = None
        if self.others:  # the fallback: one pass per sample
            jac = task_pass(list(losses.unbind()), self.others, keep_graph=False,
                            matrix=len(self.others)).grads.matrix()
            self._other_grads = jac
            total += (jac @ jac.T).double()
        return ((total + total.T) / 2).cpu()

    def backward(self, losses: Tensor, weighting: Any) -> Tensor:
        r"""Weigh the per-sample ``losses`` by ``weighting`` and accumulate :math:`J^\top w`.

        ``weighting`` is a :class:`~mtlweight.gradient_level.GramWeighting`
        (UPGrad, MGDA, DualProj, ...) or any callable ``f(gram, values) -> w``;
        returns the ``(N,)`` float64 weights.
        """
        gram = self.gram(losses)
        values = losses.detach().double().cpu()
        weigh: Callable[[Tensor, Tensor], Tensor] = getattr(weighting, "gram_weights", weighting)
        weights = weigh(gram, values)
        self.combine(weights)
        return weights

    def combine(self, weights: Tensor) -> None:
        r"""Add :math:`\sum_n w_n \nabla_\theta L_n` to the ``.grad`` (after :meth:`gram`)."""
        if self._pending is None:
            raise RuntimeError("InstanceGram.combine needs a call of gram first")
        grads: dict[int, Tensor] = {}
        for layer, a, d in self._pending:
            w = weights.to(device=d.device, dtype=d.dtype)
            full = (w[:, None, None] * d).reshape(-1, d.shape[2]).T @ a.reshape(-1, a.shape[2])
            grads[id(layer)] = grads[id(layer)] + full if id(layer) in grads else full
        for layer in self.layers:
            found = grads.get(id(layer))
            if found is None:
                continue
            weight, bias = layer.weight, layer.bias
            assert isinstance(weight, Tensor)
            if isinstance(bias, Tensor):
                found, bias_grad = found[:, :-1], found[:, -1]
                _accumulate(bias, bias_grad)
            _accumulate(weight, found.reshape(weight.shape))
        if self._other_grads is not None:
            w = weights.to(device=self._other_grads.device, dtype=self._other_grads.dtype)
            flat = w @ self._other_grads
            start = 0
            for p in self.others:
                _accumulate(p, flat[start:start + p.numel()].view_as(p))
                start += p.numel()
        self._pending = None
        self._other_grads = None


def _accumulate(param: Tensor, grad: Tensor) -> None:
    if not param.requires_grad:
        return
    grad = grad.to(param.dtype)
    param.grad = grad.clone() if param.grad is None else param.grad + grad
