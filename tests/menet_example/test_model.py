"""MENET network: parameter counts, subpixel ops, padding, forward contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from menet.model import (
    MENET,
    VARIANTS,
    ChannelAttention,
    ResidualBlock,
    depth_to_space,
    pad_to_multiple,
    space_to_depth,
)


def n_trainable(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("blocks", "ca", "expected"),
    [(8, False, 671_680), (8, True, 815_680), (16, True, 1_407_552)],
)
def test_parameter_counts_match_the_authors_graphs(blocks: int, ca: bool, expected: int) -> None:
    assert n_trainable(MENET(blocks=blocks, channel_attention=ca)) == expected


def test_parameter_count_by_hand() -> None:
    # conv k·k·cin·cout (no bias) + BN 2·cout, layer by layer (REFERENCE-FACTS "Network").
    def conv_bn(cin: int, cout: int, k: int = 3) -> int:
        return k * k * cin * cout + 2 * cout

    encoder = conv_bn(12, 16) + conv_bn(64, 64)
    attention = 2 * conv_bn(256, 64, 1) + 3 * conv_bn(64, 64)
    block = 2 * conv_bn(64, 64)
    decoder = conv_bn(64, 64) + conv_bn(16, 16) + 9 * 16 * 12
    assert n_trainable(ChannelAttention(64)) == attention
    assert n_trainable(ResidualBlock(64)) == block
    assert n_trainable(MENET(8, False)) == encoder + 8 * block + decoder


def test_running_stats_are_buffers_not_parameters() -> None:
    net = MENET()
    names = {n for n, _ in net.named_parameters()}
    assert not any("running" in n or "num_batches" in n for n in names)
    assert any("running_mean" in n for n, _ in net.named_buffers())


def test_variants() -> None:
    assert VARIANTS == {"shallow": (8, False), "shallow-ca": (8, True), "deep-ca": (16, True)}
    for name, (blocks, ca) in VARIANTS.items():
        net = MENET.variant(name)
        assert net.blocks == blocks and net.channel_attention == ca
        assert isinstance(net.attention, ChannelAttention) == ca
    with pytest.raises(ValueError, match="unknown MENET variant 'huge'"):
        MENET.variant("huge")
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        MENET(blocks=0)


def test_only_the_last_block_skips_the_final_relu() -> None:
    net = MENET(blocks=3)
    flags = [b.final_relu for b in net.body]  # type: ignore[union-attr]
    assert flags == [True, True, False]


def test_convs_are_bias_free_and_all_but_last_followed_by_bn() -> None:
    net = MENET()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert net.last_conv.in_channels == 16 and net.last_conv.out_channels == 12
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) - 1


def test_init_is_fan_in_variance_scaling() -> None:
    torch.manual_seed(0)
    net = MENET()
    block = net.body[0]
    assert isinstance(block, ResidualBlock)
    w = next(m for m in block.modules() if isinstance(m, nn.Conv2d)).weight
    fan_in = 64 * 9
    # He std sqrt(2/fan_in) truncated at ±2σ: std factor 0.8796.
    expected = math.sqrt(2.0 / fan_in) * 0.8796
    assert float(w.detach().std()) == pytest.approx(expected, rel=0.05)
    assert float(w.detach().abs().max()) <= 2 * math.sqrt(2.0 / fan_in) + 1e-6


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2), c=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5),
    block=st.sampled_from([2, 3]),
)
def test_subpixel_ops_are_inverse(b: int, c: int, h: int, w: int, block: int) -> None:
    x = torch.randn(b, c, h * block, w * block)
    assert torch.equal(depth_to_space(space_to_depth(x, block), block), x)
    y = torch.randn(b, c * block * block, h, w)
    assert torch.equal(space_to_depth(depth_to_space(y, block), block), y)


def test_space_to_depth_layout() -> None:
    x = torch.arange(2 * 16.0).reshape(1, 2, 4, 4)
    y = space_to_depth(x, 2)
    assert y.shape == (1, 8, 2, 2)
    # channel c·4 + i·2 + j holds pixel (2p + i, 2q + j) of channel c
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[0, c * 4 + i * 2 + j], x[0, c, i::2, j::2])


def test_subpixel_errors() -> None:
    with pytest.raises(ValueError, match="divisible by block=2, found 3x4"):
        space_to_depth(torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError, match="channels must be divisible"):
        depth_to_space(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        space_to_depth(torch.zeros(4, 4))


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 20), (2, 3), (5, 7), (16, 16), (17, 33)])
def test_pad_to_multiple(h: int, w: int) -> None:
    x = torch.rand(1, 3, h, w)
    p = pad_to_multiple(x, 16)
    assert p.shape[-2] % 16 == 0 and p.shape[-1] % 16 == 0
    assert p.shape[-2] - h < 16 and p.shape[-1] - w < 16
    assert torch.equal(p[..., :h, :w], x)
    # padded values are copies of the image's values
    assert set(p.flatten().tolist()) <= set(x.flatten().tolist())


def test_pad_uses_reflection_when_possible() -> None:
    x = torch.rand(1, 3, 17, 33)
    expected = F.pad(x, (0, 15, 0, 15), mode="reflect")
    assert torch.equal(pad_to_multiple(x, 16), expected)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 7), (17, 33), (32, 16)])
def test_forward_keeps_size_and_range(h: int, w: int) -> None:
    net = MENET(blocks=1).eval()
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_features_are_last_conv_output_and_define_the_residual() -> None:
    net = MENET(blocks=2).eval()
    captured = []
    net.last_conv.register_forward_hook(lambda m, i, o: captured.append(o))
    x = torch.rand(1, 3, 20, 30)
    with torch.no_grad():
        y, feats = net(x, return_features=True)
    assert feats.shape == (1, 12, 16, 16)
    assert torch.equal(feats, captured[0])
    residual = F.pixel_shuffle(feats, 2)[..., :20, :30]
    assert torch.equal(y, torch.clamp(x + residual, 0, 1))
    assert torch.equal(net(x), y)


def test_zero_last_conv_gives_identity() -> None:
    net = MENET(blocks=1).eval()
    with torch.no_grad():
        net.last_conv.weight.zero_()
        x = torch.rand(2, 3, 9, 11)
        assert torch.equal(net(x), x)


def test_gradients_reach_every_parameter_and_the_features() -> None:
    net = MENET(blocks=2, channel_attention=True)
    x = torch.rand(2, 3, 32, 32) * 0.5 + 0.25  # stays away from the clamp
    y, feats = net(x, return_features=True)
    feats.retain_grad()
    y.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_eval_output_is_independent_of_the_batch() -> None:
    net = MENET(blocks=1).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        together = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000))
def test_channel_attention_scales_between_one_and_two(seed: int) -> None:
    torch.manual_seed(seed)
    ca = ChannelAttention(8).eval()
    x = torch.rand(1, 8, 8, 8)
    with torch.no_grad():
        y = ca(x)
    ratio = y / x
    # y = x (1 + a), a = sigmoid(...) in (0, 1), the same for every pixel of a channel
    assert bool((ratio > 1 - 1e-6).all() and (ratio < 2 + 1e-6).all())
    per_channel = ratio.flatten(2)
    torch.testing.assert_close(per_channel.min(-1).values, per_channel.max(-1).values)


def test_forward_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\), found shape \(1, 1, 8, 8\)"):
        MENET(blocks=1)(torch.rand(1, 1, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_matches_cpu() -> None:
    net = MENET(blocks=1).eval()
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        expected = net(x)
        got = net.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
