"""The MENET de-raining network (Fan, Chen & Li, Fig. 5 and Fig. 6).

The network predicts a residual (the negative rain layer) at full resolution
and adds it to the rainy input:

.. math::

    \\hat B = \\operatorname{clip}\\big(O + R_\\theta(O),\\ 0,\\ 1\\big)

where :math:`O` is the rainy image, :math:`R_\\theta` the network and
:math:`\\hat B` the estimated background. The encoder downsamples twice with
*desubpixel* (:func:`space_to_depth`), runs a channel-attention module and a
stack of residual blocks at 1/4 resolution, and upsamples twice with *subpixel*
(:func:`depth_to_space`), with two long skip connections (``f1``, ``f2``).

Trainable parameters (BatchNorm affine parameters included; running statistics
are buffers): 671,680 (8 blocks), 815,680 (8 blocks + attention) and 1,407,552
(16 blocks + attention), the counts of the authors' released graphs.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MENET",
    "VARIANTS",
    "ChannelAttention",
    "ResidualBlock",
    "depth_to_space",
    "pad_to_multiple",
    "space_to_depth",
]

#: CLI names of the three networks of the paper: ``name -> (blocks, channel_attention)``.
VARIANTS: dict[str, tuple[int, bool]] = {
    "shallow": (8, False),
    "shallow-ca": (8, True),
    "deep-ca": (16, True),
}


def space_to_depth(x: Tensor, block: int = 2) -> Tensor:
    """Desubpixel downsampling: move ``block x block`` pixel neighbourhoods into channels.

    ``(B, C, H, W) -> (B, C·block², H/block, W/block)``. Uses the channel order of
    :func:`torch.nn.functional.pixel_unshuffle` (channel-major: output channel
    ``c·block² + i·block + j`` holds pixel ``(i, j)`` of each block of input channel
    ``c``), which differs from TensorFlow's ``space_to_depth`` (pixel-major) only by
    a fixed permutation of channels; it changes no parameter count and the network
    learns either equally well. Exactly inverted by :func:`depth_to_space`.

    Parameters
    ----------
    x : Tensor
        Shape ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``block``.
    block : int
        Block size (2 in MENET).

    Examples
    --------
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> space_to_depth(x, 2)[0, :, 0, 0]
    tensor([0., 1., 4., 5.])
    >>> bool((depth_to_space(space_to_depth(x, 2), 2) == x).all())
    True
    """
    if x.dim() != 4:
        raise ValueError(f"space_to_depth expects (B, C, H, W), found shape {tuple(x.shape)}")
    if x.shape[-2] % block or x.shape[-1] % block:
        raise ValueError(
            f"space_to_depth: H and W must be divisible by block={block}, "
            f"found {x.shape[-2]}x{x.shape[-1]}"
        )
    return F.pixel_unshuffle(x, block)


def depth_to_space(x: Tensor, block: int = 2) -> Tensor:
    """Subpixel upsampling, the inverse of :func:`space_to_depth`.

    ``(B, C·block², H, W) -> (B, C, H·block, W·block)`` via
    :func:`torch.nn.functional.pixel_shuffle`.

    Examples
    --------
    >>> y = torch.arange(8.0).reshape(1, 8, 1, 1)
    >>> depth_to_space(y, 2).shape
    torch.Size([1, 2, 2, 2])
    """
    if x.dim() != 4:
        raise ValueError(f"depth_to_space expects (B, C, H, W), found shape {tuple(x.shape)}")
    if x.shape[1] % (block * block):
        raise ValueError(
            f"depth_to_space: channels must be divisible by block²={block * block}, "
            f"found {x.shape[1]}"
        )
    return F.pixel_shuffle(x, block)


def pad_to_multiple(x: Tensor, multiple: int = 16) -> Tensor:
    """Pad ``(B, C, H, W)`` at the bottom/right up to multiples of ``multiple``.

    Reflect padding, applied repeatedly when the pad is not smaller than the side
    (reflection needs ``pad < size``); a side of one pixel is replicated. Crop back
    with ``y[..., :H, :W]``.

    Examples
    --------
    >>> pad_to_multiple(torch.zeros(1, 3, 5, 7)).shape
    torch.Size([1, 3, 16, 16])
    """
    h, w = x.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"cannot pad an empty image of size {h}x{w}")
    need_h, need_w = -h % multiple, -w % multiple
    while need_h or need_w:
        cur_h, cur_w = x.shape[-2:]
        if (need_h and cur_h == 1) or (need_w and cur_w == 1):
            x = F.pad(x, (0, need_w, 0, need_h), mode="replicate")
            break
        ph, pw = min(need_h, cur_h - 1), min(need_w, cur_w - 1)
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        need_h, need_w = need_h - ph, need_w - pw
    return x


def _conv(c_in: int, c_out: int, k: int = 3) -> nn.Conv2d:
    """Bias-free ``k x k`` convolution with SAME padding."""
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)


def _conv_bn(c_in: int, c_out: int, k: int = 3, relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(c_in, c_out, k), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ChannelAttention(nn.Module):
    """Channel attention of Fig. 6 on a 64-channel map at 1/4 resolution.

    .. math::

        a = \\sigma\\big(\\operatorname{GAP}(g(x))\\big), \\qquad y = x + x \\odot a

    where :math:`g` = desubpixel, 1x1 conv-BN-ReLU, 3x3 conv-BN-ReLU, desubpixel,
    1x1 conv-BN-ReLU, 3x3 conv-BN-ReLU, 3x3 conv-BN (now at 1/16 resolution), GAP
    is global average pooling and :math:`a` holds one weight per channel. The
    input's sides must be divisible by 4.

    Examples
    --------
    >>> ChannelAttention(64)(torch.rand(2, 64, 8, 8)).shape
    torch.Size([2, 64, 8, 8])
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        self.stage1 = nn.Sequential(_conv_bn(4 * c, c, 1, relu=True), _conv_bn(c, c, 3, relu=True))
        self.stage2 = nn.Sequential(_conv_bn(4 * c, c, 1, relu=True), _conv_bn(c, c, 3, relu=True))
        self.head = _conv_bn(c, c, 3)

    def forward(self, x: Tensor) -> Tensor:
        g = self.stage1(space_to_depth(x, 2))
        g = self.stage2(space_to_depth(g, 2))
        att = torch.sigmoid(self.head(g).mean(dim=(2, 3), keepdim=True))
        return x + x * att


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus identity, then ReLU (omitted for the last block).

    Examples
    --------
    >>> ResidualBlock(64)(torch.rand(1, 64, 4, 4)).shape
    torch.Size([1, 64, 4, 4])
    """

    def __init__(self, channels: int = 64, final_relu: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(channels, channels, relu=True), _conv_bn(channels, channels)
        )
        self.final_relu = final_relu

    def forward(self, x: Tensor) -> Tensor:
        y = x + self.body(x)
        return F.relu(y) if self.final_relu else y


class MENET(nn.Module):
    """MENET de-raining network: rainy ``(B, 3, H, W)`` in [0, 1] -> clean estimate.

    Any ``H x W`` is accepted: the input is reflect-padded at the bottom/right to
    multiples of 16 (see :func:`pad_to_multiple`) and the output cropped back.

    Parameters
    ----------
    blocks : int
        Number of residual blocks (8 = "shallow", 16 = "deep").
    channel_attention : bool
        Insert the channel-attention module (Fig. 6) before the residual blocks.

    Attributes
    ----------
    last_conv : nn.Conv2d
        The final 16 -> 12 convolution (no BatchNorm). Its kernel is the shared
        parameter set of the authors' gradient-balance (GB) weighting; its output
        (before subpixel upsampling) is returned as ``features`` by
        ``forward(x, return_features=True)``.

    Notes
    -----
    Convolutions are bias-free with SAME padding, each followed by BatchNorm
    except :attr:`last_conv`. Kernels are initialised with fan-in variance
    scaling, a truncated normal with std :math:`\\sqrt{2/\\text{fan\\_in}}`
    (He / Kaiming). BatchNorm uses PyTorch's defaults (momentum 0.1, eps 1e-5),
    not TensorFlow's (0.99 / 1e-3).

    Examples
    --------
    >>> net = MENET(blocks=8, channel_attention=True)
    >>> sum(p.numel() for p in net.parameters())
    815680
    >>> out, feats = net.eval()(torch.rand(1, 3, 20, 30), return_features=True)
    >>> out.shape, feats.shape
    (torch.Size([1, 3, 20, 30]), torch.Size([1, 12, 16, 16]))
    """

    def __init__(self, blocks: int = 8, channel_attention: bool = True) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, found {blocks}")
        self.blocks = blocks
        self.channel_attention = channel_attention
        # Encoder: two desubpixel stages (3 -> 12 -> conv 16 at H/2; 16 -> 64 -> conv 64 at H/4).
        self.enc1 = _conv_bn(3 * 4, 16)
        self.enc2 = _conv_bn(16 * 4, 64)
        self.attention: nn.Module = ChannelAttention(64) if channel_attention else nn.Identity()
        self.body = nn.Sequential(
            *[ResidualBlock(64, final_relu=i < blocks - 1) for i in range(blocks)]
        )
        # Decoder: conv 64 at H/4 -> subpixel -> 16 at H/2 -> conv 16 -> conv 12 -> subpixel -> 3.
        self.dec2 = _conv_bn(64, 64)
        self.dec1 = _conv_bn(16, 16)
        self.last_conv = _conv(16, 12)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(2.0 / fan_in)
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def variant(cls, name: str) -> MENET:
        """Build a named variant of :data:`VARIANTS` (``shallow``, ``shallow-ca``, ``deep-ca``).

        Examples
        --------
        >>> MENET.variant("deep-ca").blocks
        16
        """
        if name not in VARIANTS:
            raise ValueError(f"unknown MENET variant {name!r}; choose from {sorted(VARIANTS)}")
        blocks, ca = VARIANTS[name]
        return cls(blocks=blocks, channel_attention=ca)

    @overload
    def forward(self, x: Tensor, return_features: Literal[False] = ...) -> Tensor: ...
    @overload
    def forward(self, x: Tensor, return_features: Literal[True]) -> tuple[Tensor, Tensor]: ...
    @overload
    def forward(self, x: Tensor, return_features: bool) -> Tensor | tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """De-rain ``x`` of shape ``(B, 3, H, W)`` in [0, 1].

        Returns the clean estimate (same shape), or ``(output, features)`` when
        ``return_features`` is true, with ``features`` the output of
        :attr:`last_conv`, shape ``(B, 12, H'/2, W'/2)`` where ``H', W'`` are the
        padded sizes (multiples of 16).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MENET expects (B, 3, H, W), found shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        o = pad_to_multiple(x, 16)

        f1 = self.enc1(space_to_depth(o, 2))  # (B, 16, H/2, W/2)
        f2 = self.enc2(space_to_depth(F.relu(f1), 2))  # (B, 64, H/4, W/4)
        y = self.attention(F.relu(f2))
        y = self.body(y) + f2
        y = depth_to_space(self.dec2(y), 2) + f1  # (B, 16, H/2, W/2)
        features = self.last_conv(self.dec1(y))  # (B, 12, H/2, W/2)
        residual = depth_to_space(features, 2)[..., :h, :w]  # (B, 3, H, W)

        out = torch.clamp(x + residual, 0.0, 1.0)
        return (out, features) if return_features else out
