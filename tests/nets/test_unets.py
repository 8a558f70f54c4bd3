"""Forward contracts of SongUNet (DDPM++/NCSN++) and DhariwalUNet (ADM) on small configurations."""

from __future__ import annotations

import itertools

import pytest
import torch

from diffspace.errors import ConfigError
from diffspace.nets import DhariwalUNet, SongUNet

from .helpers import assert_compiles_whole, one_hot, randomize_

B, R = 3, 8


def song(**kw) -> SongUNet:
    args = dict(img_resolution=R, in_channels=3, out_channels=3, model_channels=32, channel_mult=[1, 2],
                num_blocks=1, attn_resolutions=[4], dropout=0.0)
    return SongUNet(**(args | kw))


def adm(**kw) -> DhariwalUNet:
    # 32 and 64 channels: attention (64 channels per head) only at the 4x4 level, with 1 head.
    args = dict(img_resolution=R, in_channels=3, out_channels=3, model_channels=32, channel_mult=[1, 2],
                num_blocks=1, attn_resolutions=[4], dropout=0.0)
    return DhariwalUNet(**(args | kw))


VARIANTS = {
    **{f"song-{e}-{enc}-{dec}": (lambda e=e, enc=enc, dec=dec, **kw: song(
        embedding_type=e, encoder_type=enc, decoder_type=dec,
        channel_mult_noise=2 if e == "fourier" else 1,
        resample_filter=[1, 3, 3, 1] if e == "fourier" else [1, 1], **kw))
       for e, enc, dec in itertools.product(["positional", "fourier"], ["standard", "skip", "residual"],
                                            ["standard", "skip"])},
    "adm": adm,
    "adm-2heads": lambda **kw: adm(model_channels=64, **kw),  # 128 channels at 4x4: 2 heads
}


def inputs(label_dim=0, augment_dim=0, seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([B, channels, R, R], generator=g)
    noise = torch.randn([B], generator=g)
    labels = one_hot([1, 0, 3], label_dim) if label_dim else None
    aug = torch.randn([B, augment_dim], generator=g) if augment_dim else None
    return x, noise, labels, aug


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_output_shape_equals_input_shape(variant):
    net = randomize_(VARIANTS[variant](label_dim=4, augment_dim=9)).eval()
    x, noise, labels, aug = inputs(4, 9)
    with torch.no_grad():
        y = net(x, noise, labels, aug)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()


def test_adm_out_channels_for_learned_variance():
    """iDDPM-style ADM predicts mean and variance: out_channels = 2 * in_channels."""
    net = adm(out_channels=6).eval()
    x, noise, _, _ = inputs()
    with torch.no_grad():
        assert net(x, noise).shape == (B, 6, R, R)
    assert net.out_conv.weight.shape[0] == 6


def test_song_out_channels_differs_from_in_channels():
    net = song(in_channels=1, out_channels=2, decoder_type="skip").eval()
    x, noise, _, _ = inputs(channels=1)
    with torch.no_grad():
        assert net(x, noise).shape == (B, 2, R, R)


@pytest.mark.parametrize("variant", ["song-positional-standard-standard", "song-fourier-residual-standard", "adm"])
def test_augment_labels_none_equals_zero_labels(variant):
    """Non-leaking augmentation (spec §1.6 item 7): the projection has no bias, so None ≡ zeros exactly;
    and non-zero labels do reach the output."""
    net = randomize_(VARIANTS[variant](augment_dim=9)).eval()
    assert net.map_augment.bias is None
    x, noise, _, aug = inputs(0, 9)
    with torch.no_grad():
        y_none = net(x, noise, None, None)
        y_zero = net(x, noise, None, torch.zeros_like(aug))
        y_aug = net(x, noise, None, aug)
    assert torch.equal(y_none, y_zero)
    assert (y_aug - y_none).abs().max() > 1e-3 * y_none.abs().max()


def test_adm_augment_projection_is_zero_initialised():
    net = adm(augment_dim=9)
    assert torch.count_nonzero(net.map_augment.weight) == 0
    assert net.map_augment.weight.shape == (32, 9)


@pytest.mark.parametrize("variant", ["song-positional-standard-standard", "adm"])
def test_class_labels_change_the_output(variant):
    net = randomize_(VARIANTS[variant](label_dim=4)).eval()
    x, noise, _, _ = inputs()
    with torch.no_grad():
        y1 = net(x, noise, one_hot([0, 0, 0], 4))
        y2 = net(x, noise, one_hot([2, 2, 2], 4))
        y_none = net(x, noise, None)
        y_zero = net(x, noise, torch.zeros(B, 4))
    assert (y1 - y2).abs().max() > 1e-2 * y1.abs().max()
    torch.testing.assert_close(y_none, y_zero, rtol=0, atol=0)  # None means all-zero labels


@pytest.mark.parametrize("variant", ["song-positional-standard-standard", "adm"])
def test_noise_label_changes_the_output(variant):
    net = randomize_(VARIANTS[variant]()).eval()
    x, noise, _, _ = inputs()
    with torch.no_grad():
        assert (net(x, noise) - net(x, noise + 1)).abs().max() > 1e-3


@pytest.mark.parametrize("variant", ["song-positional-standard-standard", "adm"])
def test_dropout_only_in_training_mode(variant):
    net = randomize_(VARIANTS[variant](dropout=0.5))
    x, noise, _, _ = inputs()
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x, noise), net(x, noise))
        net.train()
        torch.manual_seed(5)
        a = net(x, noise)
        torch.manual_seed(5)
        b = net(x, noise)
        c = net(x, noise)
    assert torch.equal(a, b)  # same global seed -> same dropout masks
    assert not torch.equal(b, c)


def test_label_dropout_zeroes_labels_in_training_only():
    net = randomize_(song(label_dim=4, label_dropout=1.0))
    x, noise, labels, _ = inputs(4)
    with torch.no_grad():
        net.train()
        assert torch.equal(net(x, noise, labels), net(x, noise, torch.zeros_like(labels)))
        net.eval()
        assert not torch.equal(net(x, noise, labels), net(x, noise, torch.zeros_like(labels)))


@pytest.mark.parametrize("variant", ["song-fourier-residual-skip", "adm"])
def test_channels_last_matches_contiguous(variant):
    net = randomize_(VARIANTS[variant](label_dim=4, augment_dim=9)).eval()
    x, noise, labels, aug = inputs(4, 9)
    with torch.no_grad():
        ref = net(x, noise, labels, aug)
        net = net.to(memory_format=torch.channels_last)
        y = net(x.to(memory_format=torch.channels_last), noise, labels, aug)
    # Same arithmetic up to summation order inside the convolutions: float32 rounding (~1e-7 relative)
    # accumulated over a few dozen layers stays far below 1e-4 of the output scale.
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("variant", ["song-positional-standard-standard", "adm"])
def test_bfloat16_activations_with_float32_weights(variant):
    net = randomize_(VARIANTS[variant](label_dim=4)).eval()
    x, noise, labels, _ = inputs(4)
    with torch.no_grad():
        ref = net(x, noise, labels)
        y = net(x.bfloat16(), noise.bfloat16(), labels.bfloat16())
    assert y.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits (relative step 2^-8 ≈ 4e-3 per op); a few dozen layers stay
    # within 10% of the output scale.
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("variant", ["song-fourier-skip-skip", "adm"])
def test_every_parameter_gets_a_gradient(variant):
    net = randomize_(VARIANTS[variant](label_dim=4, augment_dim=9)).train()
    x, noise, labels, aug = inputs(4, 9)
    net(x, noise, labels, aug).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("variant", ["song-fourier-residual-skip", pytest.param("adm", marks=pytest.mark.slow)])
def test_compile_traces_without_graph_breaks(variant):
    net = randomize_(VARIANTS[variant](label_dim=4, augment_dim=9)).eval()
    x, noise, labels, aug = inputs(4, 9)
    assert_compiles_whole(net, x, noise, labels, aug)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(embedding_type="sinusoidal"), "embedding_type"),
    (dict(encoder_type="fancy"), "encoder_type"),
    (dict(decoder_type="residual"), "decoder_type"),
    (dict(img_resolution=18, channel_mult=[1, 2, 2]), "img_resolution=18"),
    (dict(channel_mult=[]), "channel_mult"),
    (dict(model_channels=48, channel_mult=[1, 2]), "GroupNorm"),
    (dict(label_dim=-1), "label_dim"),
])
def test_bad_configuration_raises_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        song(**kwargs)
