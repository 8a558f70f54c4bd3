"""Preconditioning coefficients of Table 1 and the variance identities of spec §5 item 4(d)."""


import torch
from torch import nn

from diffspace.design.precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond


class Probe(nn.Module):
    """Raw network that records its inputs and returns a constant."""

    def __init__(self, value=0.0, channels=None):
        super().__init__()
        self.value, self.channels, self.seen = value, channels, {}

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        self.seen = {"x": x, "c_noise": noise_labels, "class_labels": class_labels}
        out = torch.full_like(x, self.value)
        return torch.cat([out, out + 100], 1) if self.channels else out


def test_edm_coefficients():
    net = EDMPrecond(Probe(1.0), sigma_data=0.5)
    x = torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    out = net(x, sigma)
    s = sigma.view(-1, 1, 1, 1)
    c_skip = 0.25 / (s**2 + 0.25)
    c_out = s * 0.5 / (s**2 + 0.25).sqrt()
    assert torch.allclose(out, c_skip * x + c_out, atol=1e-6)
    assert torch.allclose(net.model.seen["x"], x / (s**2 + 0.25).sqrt(), atol=1e-6)
    assert torch.allclose(net.model.seen["c_noise"], sigma.log() / 4)


def test_ve_vp_coefficients():
    x = torch.randn(2, 3)
    sigma = torch.tensor([0.5, 5.0])
    ve = VEPrecond(Probe(1.0))
    assert torch.allclose(ve(x, sigma), x + sigma[:, None])
    assert torch.allclose(ve.model.seen["c_noise"], (0.5 * sigma).log())
    vp = VPPrecond(Probe(1.0))
    assert torch.allclose(vp(x, sigma), x - sigma[:, None])
    assert torch.allclose(vp.model.seen["x"], x / (sigma[:, None] ** 2 + 1).sqrt())
    t = vp.model.seen["c_noise"] / 999  # c_noise = (M−1)σ⁻¹(σ); σ_VP(t) must give σ back
    beta_d, beta_min = 19.9, 0.1
    assert torch.allclose(((0.5 * beta_d * t**2 + beta_min * t).exp() - 1).sqrt(), sigma, rtol=1e-5)
    assert abs(vp.sigma_min - 0.0010005) < 5e-8 and abs(vp.sigma_max - 152.167) < 5e-4


def test_iddpm_round_sigma_and_channels():
    net = iDDPMPrecond(Probe(0.0, channels=True), out_channels=2)
    u = net.u
    sigma = torch.tensor([float(u[500]) * 1.001, 80.0])
    assert torch.equal(net.round_sigma(sigma), torch.stack([u[500], u[8]]))
    out = net(torch.zeros(2, 2, 3, 3), sigma)
    assert out.shape == (2, 2, 3, 3) and (out == 0).all()  # only the first C channels are used
    assert net.model.seen["c_noise"].tolist() == [999 - 500, 999 - 8]
    assert abs(net.sigma_min - 0.006425) < 5e-7


def test_edm_variance_identities_on_real_data():
    # With σ_data = std(y), EDM's coefficients make Var[c_in(y+n)] = 1 and Var[(y − c_skip(y+n))/c_out] = 1 for
    # every σ (the paper's Appendix B.6). Checked with the library's own coefficients on real data.
    from sklearn.datasets import load_digits

    y = torch.as_tensor(load_digits().data, dtype=torch.float64) / 8 - 1  # 1797×64 in [−1, 1]
    y = y - y.mean()
    sd = float(y.std())
    net = EDMPrecond(Probe(), sigma_data=sd)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.01, 0.5, 3.0, 80.0):
        n = torch.randn(y.shape, generator=g, dtype=torch.float64) * sigma
        c_skip, c_out, c_in, _ = (float(c) for c in net.coefficients(torch.tensor(sigma, dtype=torch.float64)))
        # 115k elements: the sample variance has relative standard error ≈ sqrt(2/115k) ≈ 0.4 %; allow 3 %.
        assert abs(float((c_in * (y + n)).var()) - 1) < 0.03
        assert abs(float(((y - c_skip * (y + n)) / c_out).var()) - 1) < 0.03
    # A wrong σ_data (2×) breaks the identity at small σ: the test can fail.
    c_skip, c_out, c_in, _ = (float(c) for c in EDMPrecond(Probe(), sigma_data=2 * sd).coefficients(
        torch.tensor(0.01, dtype=torch.float64)))
    assert abs(float((c_in * y).var()) - 1) > 0.5


def test_labels_reshaped_and_dropped():
    net = EDMPrecond(Probe(), label_dim=3)
    net(torch.zeros(2, 4), torch.ones(2))
    assert net.model.seen["class_labels"].shape == (1, 3) and (net.model.seen["class_labels"] == 0).all()
    net0 = EDMPrecond(Probe())
    net0(torch.zeros(2, 4), torch.ones(2), class_labels=torch.ones(2, 5))
    assert net0.model.seen["class_labels"] is None
