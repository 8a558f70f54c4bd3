"""Tests of the non-leaking augmentation pipeline (spec section 1.6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffspace.errors import ConfigError, DataError
from diffspace.train.augment import (
    SYM6,
    AugmentPipe,
    AugmentPoints2D,
    _rotate,
    _translate,
    resample,
)

OFF = dict(xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)  # every transform disabled


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# A band-limited test image: tones (amplitude, cycles along x, cycles along y, phase) over n pixels.
TONES = [(1.0, 1, 0, 0.3), (1.0, 0, 1, 1.1 - math.pi / 2), (0.5, 1, 2, 0.0)]


def smooth_image(X: torch.Tensor, Y: torch.Tensor, n: int) -> torch.Tensor:
    """The test image evaluated at any (real) pixel positions."""
    w = 2 * math.pi / n
    return sum(a * torch.cos(w * (kx * X + ky * Y) + ph) for a, kx, ky, ph in TONES)


def bilinear_bound(n: int) -> float:
    """Bilinear interpolation on the 2x grid (spacing h = 1/2 px) errs by <= h^2/8 (|f_xx| + |f_yy|) (tone by tone).

    The sym6 up/down pair is flat to ~1e-10 at these frequencies (six vanishing moments), so this bounds the error of
    a fractional warp."""
    w = 2 * math.pi / n
    return sum(a * 0.5**2 / 8 * w**2 * (kx**2 + ky**2) for a, kx, ky, _ in TONES)


def sym6_phase_bound(n: int, reversed_x: bool, reversed_y: bool) -> float:
    """Error of reading a reversed axis through the sym6 pair, beyond its constant offset.

    Up- and down-sampling filter with h at the 2x rate; their phases cancel unless the axis is reversed, then they
    add: a tone of frequency u per original pixel is off by 2 |arg H(u/2) + c u/2| radians, c = centroid of h."""
    h = torch.tensor(SYM6, dtype=torch.float64)
    k = torch.arange(12, dtype=torch.float64)
    c = ((k * h).sum() / h.sum()).item()

    def phase_err(u: float) -> float:
        v = u / 2
        H = torch.complex((h * torch.cos(v * k)).sum(), -(h * torch.sin(v * k)).sum())
        return abs(torch.angle(H).item() + c * v)

    w = 2 * math.pi / n
    return sum(a * 2 * (phase_err(w * kx) * reversed_x + phase_err(w * ky) * reversed_y) for a, kx, ky, _ in TONES)


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    j = torch.arange(n, dtype=torch.float64)
    Y, X = torch.meshgrid(j, j, indexing="ij")
    return X, Y


# ---------------------------------------------------------------------------------------------------------------
# The sym6 filter.

def test_sym6_is_an_orthonormal_wavelet_filter_with_six_vanishing_moments():
    h = torch.tensor(SYM6, dtype=torch.float64)
    assert len(SYM6) == 12
    # Low-pass normalisation of an orthonormal filter bank: sum h = sqrt(2) (not 1), sum h^2 = 1.
    assert h.sum().item() == pytest.approx(math.sqrt(2), abs=1e-12)
    # Double-shift orthogonality sum_k h[k] h[k+2q] = delta_q (taps are published to ~1e-12).
    for q in range(1, 6):
        assert abs(torch.dot(h[: 12 - 2 * q], h[2 * q:]).item()) < 1e-11
    assert torch.dot(h, h).item() == pytest.approx(1.0, abs=1e-11)
    # The high-pass g[k] = (-1)^k h[11-k] annihilates polynomials of degree < 6 (Daubechies order 6).
    k = torch.arange(12, dtype=torch.float64)
    g = (-1) ** k * h.flip(0)
    for m in range(6):
        assert abs((g * (k / 11) ** m).sum().item()) < 1e-10
    # Least asymmetric ('sym', not 'db6', whose taps start -0.00108, 0.00478, ...): largest taps in the middle.
    assert int(h.abs().argmax()) == 5 and h[0].item() == pytest.approx(0.015404109327027373, abs=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# The resampler.

def test_resample_identity_is_exact_up_to_the_taps_precision():
    x = torch.randn(3, 2, 16, 16, generator=gen(), dtype=torch.float64)
    out = resample(x, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    # Up- then down-sampling with an orthonormal filter is the identity; 1e-9 covers the 1e-12 tap rounding.
    assert (out - x).abs().max().item() < 1e-9


def test_resample_integer_translation_is_a_shift_of_the_reflect_padded_image():
    x = torch.randn(2, 1, 16, 16, generator=gen(1), dtype=torch.float64)
    tx, ty = torch.tensor([3.0, -2.0], dtype=torch.float64), torch.tensor([-1.0, 4.0], dtype=torch.float64)
    out = resample(x, _translate(-tx, -ty))  # content moves by (+tx, +ty)
    pad = F.pad(x, [8, 8, 8, 8], mode="reflect")
    for i in range(2):
        sx, sy = int(tx[i]), int(ty[i])
        expect = pad[i, :, 8 - sy:24 - sy, 8 - sx:24 - sx]  # out[y, x] = padded x[y - ty, x - tx]
        # Integer shifts move the 2x grid onto itself, so bilinear is exact: only rounding (1e-9) remains.
        assert (out[i] - expect).abs().max().item() < 1e-9


@pytest.mark.parametrize("q", [1, 2, 3])
def test_rotation_by_quarter_turns_matches_rot90_up_to_sym6_offset(q):
    n = 32
    X, Y = grid(n)
    x = smooth_image(X, Y, n).view(1, 1, n, n)
    out = resample(x, _rotate(torch.tensor([q * math.pi / 2], dtype=torch.float64)))[0, 0]
    # Label angle theta rotates the content like torch.rot90(k=theta/(pi/2), dims=(2, 3)) (counter-clockwise).
    err_rot90 = (out - torch.rot90(x, q, dims=(2, 3))[0, 0])[4:-4, 4:-4].abs().max().item()
    assert err_rot90 < 0.1
    # sym6 is not symmetric: its centroid c = 5.098 is not the 5.0 the 2x grids assume, so every reversed axis
    # reads the source (c - 5) pixel off (as in EDM). Quarter turns map the 2x grid onto itself (no bilinear
    # error), so with that offset only the filters' phase non-linearity remains.
    h = torch.tensor(SYM6, dtype=torch.float64)
    d = ((torch.arange(12) * h).sum() / h.sum()).item() - 5
    c, s = round(math.cos(q * math.pi / 2)), round(math.sin(q * math.pi / 2))
    xc, yc = X - (n - 1) / 2, Y - (n - 1) / 2
    xs, ys = c * xc - s * yc, s * xc + c * yc  # output p reads input R(theta) p
    rev_x, rev_y = (c < 0 or s > 0), (c < 0 or s < 0)  # source axes read backwards
    expect = smooth_image(xs - d * rev_x + (n - 1) / 2, ys - d * rev_y + (n - 1) / 2, n)
    err = (out - expect)[4:-4, 4:-4].abs().max().item()
    tol = 1.05 * sym6_phase_bound(n, rev_x, rev_y) + 1e-6  # 5% and 1e-6 for aliasing, gain, rounding
    assert err < tol
    assert err_rot90 > 10 * tol  # the offset is real: plain rot90 is far outside that bound


# ---------------------------------------------------------------------------------------------------------------
# The pipeline.

def test_p_zero_is_the_identity_with_zero_labels():
    x = torch.randn(8, 3, 32, 32, generator=gen())
    for pipe in (AugmentPipe(0.0), AugmentPipe(0.0, **{**OFF, "scale": 1})):
        out, labels = pipe(x, generator=gen())
        assert torch.equal(out, x) and torch.equal(labels, torch.zeros(8, 9))


def test_xflip_probability_follows_edm_semantics():
    # x-flip active with probability min(1, xflip p), then a fair coin: 1e8 * 1e-3 >= 1, so flips happen half the
    # time; 4 standard errors of a binomial fraction over 4000 draws is 4 * sqrt(0.25 / 4000) = 0.032.
    labels = AugmentPipe(1e-3, **{**OFF, "xflip": 1e8}).draw(4000, 8, 8, generator=gen()).labels
    assert abs(labels[:, 0].mean().item() - 0.5) < 0.032
    assert labels[:, 1:].abs().sum().item() == 0


def test_xflip_is_torch_flip_exactly_where_the_label_says_so():
    x = torch.randn(64, 3, 32, 32, generator=gen())
    out, labels = AugmentPipe(1.0, **{**OFF, "xflip": 1})(x, generator=gen(2))
    f = labels[:, 0] == 1
    assert 0 < f.sum() < 64 and labels[:, 1:].abs().sum() == 0
    assert torch.equal(out[f], x[f].flip(3)) and torch.equal(out[~f], x[~f])


def test_yflip_is_torch_flip_over_rows():
    x = torch.randn(64, 1, 28, 28, generator=gen())
    out, labels = AugmentPipe(1.0, **{**OFF, "yflip": 1})(x, generator=gen(3))
    f = labels[:, 1] == 1
    assert 0 < f.sum() < 64
    assert torch.equal(out[f], x[f].flip(2)) and torch.equal(out[~f], x[~f])


def test_translation_labels_map_to_their_shift():
    n = 32
    X, Y = grid(n)
    x = smooth_image(X, Y, n).expand(16, 1, n, n).contiguous()
    out, labels = AugmentPipe(1.0, **{**OFF, "translate_frac": 1})(x, generator=gen(4))
    for i in range(16):
        sx, sy = 0.125 * n * labels[i, 7].item(), 0.125 * n * labels[i, 8].item()  # shift 0.125 W w_x
        # Compare where the source and the filter supports (6 px) stay inside the image.
        xs, ys = X - sx, Y - sy
        inside = (xs >= 6) & (xs <= n - 7) & (ys >= 6) & (ys <= n - 7)
        if inside.sum() < 16:
            continue
        err = (out[i, 0] - smooth_image(xs, ys, n))[inside].abs().max().item()
        assert err < bilinear_bound(n), (i, sx, sy, err)
        # The wrong direction of shift is far off (a shift by 2 |s| moves the image by ~ |grad f| 2 |s|).
        if math.hypot(sx, sy) > 0.5:
            assert (out[i, 0] - smooth_image(X + sx, Y + sy, n))[inside].abs().max().item() > 10 * bilinear_bound(n)


def test_label_semantics_of_the_geometric_maps():
    W, H = 32, 28
    for name, cols in [("scale", [2]), ("rotate_frac", [3, 4]), ("aniso", [5, 6]), ("translate_frac", [7, 8])]:
        prm = AugmentPipe(1.0, **{**OFF, name: 1}).draw(256, H, W, generator=gen(5))
        lab, G = prm.labels.double(), prm.G_inv.double()
        others = [c for c in range(9) if c not in cols]
        assert lab[:, others].abs().sum() == 0 and lab[:, cols].abs().sum() > 0
        A = G[:, :2, :2]
        if name == "scale":  # G_inv = 2^(-0.2 w) I
            assert torch.allclose(A, torch.exp2(-0.2 * lab[:, 2]).view(-1, 1, 1) * torch.eye(2, dtype=A.dtype),
                                  atol=1e-6)
        if name == "rotate_frac":  # G_inv = R(theta), labels (cos theta - 1, sin theta)
            c, s = lab[:, 3] + 1, lab[:, 4]
            assert torch.allclose(A, torch.stack([c, -s, s, c], 1).view(-1, 2, 2), atol=1e-6)
        if name == "aniso":  # area preserving, stretch 2^(0.2 |w|) with |w| = |label|
            w = lab[:, 5:7].norm(dim=1)
            sv = torch.linalg.svdvals(A)
            assert torch.allclose(torch.linalg.det(A), torch.ones_like(w), atol=1e-5)
            assert torch.allclose(sv[:, 0], torch.exp2(0.2 * w), atol=1e-5)
            # Frame rotated (label_y != 0) for about half of the images (aniso_rotate_prob = 0.5).
            assert 0.5 - 4 * math.sqrt(0.25 / 256) < (lab[:, 6] != 0).double().mean() < 0.5 + 4 * math.sqrt(0.25 / 256)
        if name == "translate_frac":  # read from p - 0.125 (W w_x, H w_y)
            assert torch.allclose(A, torch.eye(2, dtype=A.dtype).expand_as(A))
            assert torch.allclose(G[:, 0, 2], -0.125 * W * lab[:, 7], atol=1e-5)
            assert torch.allclose(G[:, 1, 2], -0.125 * H * lab[:, 8], atol=1e-5)
    # Composition: only isotropic scaling changes area, det G_inv = 2^(-0.4 w_scale).
    prm = AugmentPipe(1.0).draw(256, H, W, generator=gen(6))
    det = torch.linalg.det(prm.G_inv[:, :2, :2].double())
    assert torch.allclose(det, torch.exp2(-0.4 * prm.labels[:, 2].double()), rtol=1e-5)


def test_label_statistics_match_p():
    n, p = 20000, 0.12
    lab = AugmentPipe(p).draw(n, 32, 32, generator=gen(7)).labels.double()

    def near(frac, q):  # a binomial fraction within 4 standard errors
        return abs(frac - q) < 4 * math.sqrt(q * (1 - q) / n)

    nz = lab != 0
    assert near(nz[:, 0].double().mean().item(), 0.5)       # x-flip always active, fair coin
    assert near(nz[:, 1].double().mean().item(), p / 2)     # y-flip active with p, then a coin
    for cols in ([2], [3, 4], [5], [7, 8]):
        applied = nz[:, cols].all(dim=1)
        assert near(applied.double().mean().item(), p)
        assert torch.equal(applied, nz[:, cols].any(dim=1))  # a transform's labels are zero together
    for col in (2, 7, 8):  # applied values ~ N(0, 1): mean SE 1/sqrt(m), std SE ~ 1/sqrt(2m)
        w = lab[nz[:, col], col]
        m = w.numel()
        assert abs(w.mean().item()) < 4 / math.sqrt(m) and abs(w.std().item() - 1) < 4 / math.sqrt(2 * m)
    theta = torch.atan2(lab[:, 4], lab[:, 3] + 1)[nz[:, 3]]  # ~ U(-pi, pi): mean 0, sd pi/sqrt(3)
    assert abs(theta.mean().item()) < 4 * math.pi / math.sqrt(3 * theta.numel())
    assert abs(theta.abs().mean().item() - math.pi / 2) < 4 * math.pi / math.sqrt(12 * theta.numel())  # sd pi/sqrt12
    w = lab[nz[:, 5], 5:7].norm(dim=1)  # |w| of N(0,1): mean sqrt(2/pi), sd sqrt(1 - 2/pi)
    assert abs(w.mean().item() - math.sqrt(2 / math.pi)) < 4 * math.sqrt((1 - 2 / math.pi) / w.numel())


def test_generator_makes_augmentation_reproducible():
    x = torch.randn(16, 3, 32, 32, generator=gen())
    pipe, g = AugmentPipe(0.5), gen(8)
    state = g.get_state()
    a, la = pipe(x, generator=g)
    a2, la2 = pipe(x, generator=g)
    g.set_state(state)  # resume from a saved state
    b, lb = pipe(x, generator=g)
    b2, lb2 = pipe(x, generator=g)
    assert torch.equal(a, b) and torch.equal(la, lb) and torch.equal(a2, b2) and torch.equal(la2, lb2)
    assert not torch.equal(la, la2)


@pytest.mark.parametrize("hw", [28, 32])
def test_channels_are_augmented_alike_and_untouched_images_stay_exact(hw):
    x = torch.randn(32, 3, hw, hw, generator=gen())
    out3, lab3 = AugmentPipe(0.5)(x, generator=gen(9))
    assert out3.shape == x.shape and lab3.shape == (32, 9) and lab3.dtype == torch.float32
    for c in range(3):  # C=1 with the same draws gives each channel of the C=3 result
        out1, lab1 = AugmentPipe(0.5)(x[:, c:c + 1], generator=gen(9))
        assert torch.equal(lab1, lab3)
        assert (out1[:, 0] - out3[:, c]).abs().max().item() < 1e-5  # float32 rounding of differently-shaped convs
    none = lab3.abs().sum(dim=1) == 0
    assert torch.equal(out3[none], x[none])


def test_channels_last_input():
    x = torch.randn(16, 3, 32, 32, generator=gen())
    a, la = AugmentPipe(1.0)(x, generator=gen(10))
    b, lb = AugmentPipe(1.0)(x.contiguous(memory_format=torch.channels_last), generator=gen(10))
    assert b.is_contiguous(memory_format=torch.channels_last) and a.is_contiguous()
    assert torch.equal(la, lb) and (a - b).abs().max().item() < 1e-5


def test_pipe_is_differentiable():
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, generator=gen(), requires_grad=True)
    pipe = AugmentPipe(1.0)
    assert pipe.draw(2, 8, 8, generator=gen(11)).labels[:, 2:].abs().sum(dim=1).min() > 0  # every image warped
    assert torch.autograd.gradcheck(lambda t: pipe(t, generator=gen(11))[0], (x,), fast_mode=True)


def test_bad_arguments():
    with pytest.raises(ConfigError):
        AugmentPipe(1.5)
    with pytest.raises(ConfigError):
        AugmentPipe(0.1, scale=-1)
    with pytest.raises(DataError):
        AugmentPipe(0.1)(torch.zeros(3, 8, 8))
    with pytest.raises(DataError):
        AugmentPoints2D(1.0)(torch.zeros(4, 3))


# ---------------------------------------------------------------------------------------------------------------
# 2-D points.

def test_points_xflip_and_rotation_labels():
    x = torch.randn(4000, 2, generator=gen(), dtype=torch.float64)
    aug = AugmentPoints2D(p=1.0, xflip=1.0)
    y, lab = aug(x, generator=gen(12))
    assert lab.shape == (4000, aug.augment_dim) == (4000, 3)
    f = lab[:, 0] == 1
    assert abs(f.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / 4000)
    assert torch.equal(y[f], torch.stack([-x[f, 0], x[f, 1]], 1)) and torch.equal(y[~f], x[~f])
    assert lab[:, 1:].abs().sum() == 0

    aug = AugmentPoints2D(p=0.5, xflip=0.0, rotate=1.0)
    y, lab = aug(x, generator=gen(13))
    r = lab[:, 2] != 0
    assert abs(r.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / 4000) and lab[:, 0].abs().sum() == 0
    c, s = lab[:, 1].double() + 1, lab[:, 2].double()
    assert torch.allclose(c**2 + s**2, torch.ones_like(c), atol=1e-6)  # (cos - 1, sin) of one angle
    # Counter-clockwise rotation: the cross product of x and y has the sign of sin(theta).
    cross = x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0]
    assert torch.equal(torch.sign(cross[r]), torch.sign(s[r]))
    assert torch.allclose(y, torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]], 1), atol=1e-6)
    assert torch.equal(y[~r], x[~r])
