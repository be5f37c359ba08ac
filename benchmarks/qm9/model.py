"""The MPNN of Gilmer et al. as in PyTorch Geometric's QM9 example, one head per task.

The network of the Nash-MTL and FAMO papers' QM9 code::

    h0 = relu(lin0(x))                                  (N, dim)
    3 x: m = relu(NNConv(h, edge_attr)); h = GRU(m, h)  edge network 5 -> 128 -> dim^2, mean
    z  = relu(lin1(Set2Set(h, batch, steps=3)))         (G, dim): the graph embedding
    y_t = head_t(z)                                     one Linear(dim, 1) per task

``z`` is the shared representation that the gradient-level strategies take at
CPU scale (``representation=``); :meth:`MPNN.shared` is the trunk (every layer
but the heads) for the rows on shared parameters, as the papers do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import NUM_EDGE_FEATURES, NUM_NODE_FEATURES, Batch


class EdgeConv(nn.Module):
    r"""PyG's ``NNConv(dim, dim, nn, aggr="mean")``, with the edge network applied once.

    .. math::

        h_i' = W_r h_i + b + \frac{1}{|N(i)|} \sum_{j \in N(i)} h_j \, \Theta(e_{ji}),
        \qquad \Theta(e) = \operatorname{reshape}_{d \times d}(\mathrm{MLP}(e))

    NNConv evaluates the edge network :math:`\Theta` in every call, so three
    message passes evaluate it three times on the same edge features; here
    :meth:`edge_weights` is computed once per forward pass and reused (the same
    function and gradients; the parameter names are NNConv's: ``nn``, ``lin``, ``bias``).
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.dim = dim
        self.nn = nn.Sequential(
            nn.Linear(NUM_EDGE_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, dim * dim)
        )
        self.lin = nn.Linear(dim, dim, bias=False)
        bound = 1.0 / dim**0.5  # NNConv's initialisation: uniform root weight, zero bias
        nn.init.uniform_(self.lin.weight, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(dim))

    def edge_weights(self, edge_attr: Tensor) -> Tensor:
        r""":math:`\Theta(e)` for every edge, shape ``(E, dim, dim)``."""
        weights: Tensor = self.nn(edge_attr)
        return weights.view(-1, self.dim, self.dim)

    def forward(self, x: Tensor, edge_index: Tensor, weights: Tensor) -> Tensor:
        source, target = edge_index
        messages = torch.bmm(x[source].unsqueeze(1), weights).squeeze(1)
        total = torch.zeros_like(x).index_add_(0, target, messages)
        count = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        count.index_add_(0, target, torch.ones_like(target, dtype=x.dtype))
        root: Tensor = self.lin(x)
        return total / count.clamp(min=1).unsqueeze(1) + root + self.bias


class MPNN(nn.Module):
    """NNConv + GRU message passing, Set2Set readout, ``num_tasks`` linear heads.

    ``dim=64``, three message passes and three Set2Set steps give PyG's example
    (617k shared parameters).
    """

    def __init__(
        self,
        num_tasks: int,
        *,
        dim: int = 64,
        edge_hidden: int = 128,
        passes: int = 3,
        s2s_steps: int = 3,
    ) -> None:
        super().__init__()
        from torch_geometric.nn import Set2Set

        self.passes = passes
        self.lin0 = nn.Linear(NUM_NODE_FEATURES, dim)
        self.conv = EdgeConv(dim, edge_hidden)
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, processing_steps=s2s_steps)
        self.lin1 = nn.Linear(2 * dim, dim)
        self.heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_tasks))

    def shared(self) -> list[nn.Module]:
        """The trunk: every layer below the heads."""
        return [self.lin0, self.conv, self.gru, self.set2set, self.lin1]

    def embed(self, data: Batch) -> Tensor:
        """The graph embedding ``z``, shape ``(G, dim)``."""
        out = F.relu(self.lin0(data.x))
        h = out.unsqueeze(0)
        weights = self.conv.edge_weights(data.edge_attr)  # the same at every pass
        for _ in range(self.passes):
            m = F.relu(self.conv(out, data.edge_index, weights))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        pooled = self.set2set(out, data.batch, dim_size=data.num_graphs)
        return F.relu(self.lin1(pooled))

    def forward(self, data: Batch) -> tuple[Tensor, Tensor]:
        """Predictions ``(G, T)`` and the embedding ``(G, dim)``."""
        z = self.embed(data)
        return torch.cat([head(z) for head in self.heads], dim=1), z
