"""A diffusers UNet2DModel folder as a diffspace denoiser: diffspace's ddim/euler on the timesteps of diffusers'
DDIMScheduler (eta 0) reproduce diffusers' own DDIM loop, for ε- and v-prediction; bad folders give one-line
errors. DDIM with eta 0 is exactly Euler on the probability-flow ODE in σ (Song et al. 2021; Karras et al. 2022),
so the only differences are float32 rounding inside diffusers' loop (its state is float32, diffspace's float64)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffspace import generate as G
from diffspace import samplers
from diffspace.cli import main
from diffspace.external import load_diffusers

diffusers = pytest.importorskip("diffusers")


def _unet(num_class_embeds=None, seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 num_class_embeds=num_class_embeds)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # O(1) random weights everywhere, so the network's output matters at every step
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1))
    return unet.eval()


def _save(folder, prediction="epsilon", num_class_embeds=None, seed=0):
    unet = _unet(num_class_embeds, seed)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                    beta_schedule="linear", prediction_type=prediction)
    unet.save_pretrained(folder)
    sched.save_pretrained(folder)
    return unet, sched


def _diffusers_ddim(unet, folder, x_T, steps):
    config = diffusers.DDIMScheduler.load_config(folder)
    sched = diffusers.DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    if x_T.dtype == torch.float64:  # its ᾱ table too (diffusers keeps it in float32)
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return x, sched.timesteps


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_diffspace_ddim_reproduces_diffusers_ddim_loop(tmp_path, prediction, sampler):
    """Same network, same initial noise, same timesteps. In float64 (network, state and diffusers' ᾱ table) the
    two agree to 1e-5 (measured: 1e-13 for ε, 2e-15 for v). In float32, diffusers' loop keeps its state in
    float32: a random ε-network's samples reach |x| ~ 200 (its x₀ guesses are far from the data), where float32
    spacing is 1.5e-5, so there the bound is relative: 1e-6·max|x| (a few float32 roundings per step over 10
    steps; measured 4.7e-5 at |x| = 184 for ε, 6e-7 at |x| = 2.7 for v)."""
    unet, _ = _save(tmp_path, prediction)
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    expected, timesteps = _diffusers_ddim(unet, tmp_path, x_T, steps=10)
    expected64, _ = _diffusers_ddim(_unet(seed=0).double().eval(), tmp_path, x_T.double(), steps=10)
    assert (expected - x_T).abs().max() > 0.1  # a non-trivial trajectory
    for dtype, want in ((torch.float64, expected64), (torch.float32, expected)):
        D, info = load_diffusers(tmp_path)
        D.to(dtype)
        assert D.dtype == dtype and D.sigmas.dtype == torch.float64
        assert info["diffusers"]["prediction_type"] == prediction and D.label_dim == 0
        sigmas = D.timesteps_to_sigmas(timesteps)  # + a final 0: DDIM's set_alpha_to_one ends at ᾱ = 1
        assert sigmas[0] == D.sigmas[int(timesteps[0])] and sigmas[-1] == 0
        stats = {}
        z = samplers.get(sampler)(D, x_T.to(torch.float64) * (1 + sigmas[0] ** 2).sqrt(), sigmas, stats=stats)
        assert stats["nfe"] == 10
        err = (z - want.to(torch.float64)).abs().max().item()
        bound = 1e-5 if dtype == torch.float64 else 1e-6 * want.abs().max().item()
        assert err < bound, (dtype, err, bound)


def test_sigma_timestep_maps_and_ranges(tmp_path):
    _save(tmp_path)
    D, _ = load_diffusers(tmp_path)
    ref = diffusers.DDPMScheduler.from_pretrained(tmp_path).alphas_cumprod.to(torch.float64)
    table = ((1 - ref) / ref).sqrt()
    assert torch.equal(D.sigmas, table)
    assert D.sigma_min == table[0].item() and D.sigma_max == table[-1].item()
    t = torch.tensor([0, 1, 500, 998, 999])
    assert torch.equal(D.sigma_to_t(table[t]), t.to(torch.float64))  # table levels give their exact timestep
    assert torch.equal(D.sigma_to_t(table[t], "nearest"), t.to(torch.float64))
    mid = (table[500] * table[501]).sqrt()  # geometric midpoint: half-way in log σ
    assert abs(D.sigma_to_t(mid).item() - 500.5) < 1e-12
    assert D.sigma_to_t(mid * 1.0001, "nearest").item() == 501
    assert torch.allclose(D.t_to_sigma(D.sigma_to_t(torch.tensor([0.02, 1.0, 80.0]))), torch.tensor(
        [0.02, 1.0, 80.0], dtype=torch.float64), rtol=1e-12)
    assert torch.equal(D.round_sigma(mid), mid)  # interpolate mode: any σ is a valid level
    N, _ = load_diffusers(tmp_path, timestep="nearest")
    assert N.round_sigma(mid * 1.0001).item() == table[501].item()
    # Grids respect the model's range: the edm grid is clamped to σ_min, nearest-mode levels sit on the table.
    levels = G.noise_levels(N, 12, "edm", sigma_max=1e3)
    assert levels[0].item() == table[-1].item() and levels[-2].item() == table[0].item()
    assert all(bool((table == s).any()) for s in levels[:-1])


def test_generate_accepts_a_diffusers_folder(tmp_path):
    _save(tmp_path / "model", "v_prediction")
    out = tmp_path / "a.npz"
    assert main(["generate", "--network", str(tmp_path / "model"), "--seeds", "0-3", "--steps", "6",
                 "--sampler", "dpmpp_2m", "--npz", str(out), "--no-progress"]) == 0
    images = np.load(out)["images"]
    assert images.shape == (4, 8, 8, 2)
    D, _ = load_diffusers(tmp_path / "model")
    again = G.generate(D, range(4), sampler="dpmpp_2m", steps=6)
    assert np.array_equal(again.images, images) and len({im.tobytes() for im in images}) == 4


def test_class_conditional_unet_gets_indices_and_null_class(tmp_path):
    unet, _ = _save(tmp_path, num_class_embeds=4)
    D, info = load_diffusers(tmp_path, null_class=3)
    assert D.label_dim == 4 and info["data"]["label_dim"] == 4
    x, sigma = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.full((2,), 2.0, dtype=torch.float64)
    t = D.sigma_to_t(sigma).to(torch.float32)
    with torch.no_grad():
        eps = unet((x / 5**0.5).float(), t, class_labels=torch.tensor([1, 3])).sample.double()
        got = D(x, sigma, class_labels=torch.tensor([[0, 1.0, 0, 0], [0, 0, 0, 0]]))  # second row: null label
    torch.testing.assert_close(got, x - 2 * eps, rtol=0, atol=1e-12)
    with pytest.raises(Exception, match="null class"):
        load_diffusers(tmp_path)[0](x, sigma, class_labels=torch.zeros(2, 4))


def _one_line_error(capsys, folder, out, *needles):
    assert main(["generate", "--network", str(folder), "--npz", str(out), "--no-progress", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("diffspace generate: error:"), err
    for n in needles:
        assert n in err, err


def test_bad_diffusers_folders(tmp_path, capsys):
    good = tmp_path / "good"
    _save(good)
    out = tmp_path / "x.npz"

    def variant(name, edit):
        import shutil

        folder = tmp_path / name
        shutil.copytree(good, folder)
        edit(folder)
        return folder

    def sched_edit(**changes):
        def edit(folder):
            cfg = json.loads((folder / "scheduler_config.json").read_text())
            cfg.update(changes)
            cfg = {k: v for k, v in cfg.items() if v is not None}
            (folder / "scheduler_config.json").write_text(json.dumps(cfg))
        return edit

    _one_line_error(capsys, variant("nosched", lambda f: (f / "scheduler_config.json").unlink()), out,
                    "scheduler_config.json is missing")
    _one_line_error(capsys, variant("unknown", sched_edit(_class_name="FooScheduler")), out, "FooScheduler")
    _one_line_error(capsys, variant("notype", sched_edit(_class_name=None)), out, "_class_name missing")
    _one_line_error(capsys, variant("pred", sched_edit(prediction_type="x0")), out, "prediction_type 'x0'")
    _one_line_error(capsys, variant("betas", sched_edit(trained_betas=[0.1, -0.05, 0.2])), out,
                    "not strictly decreasing")

    def truncate(folder):
        w = folder / "diffusion_pytorch_model.safetensors"
        w.write_bytes(w.read_bytes()[:1000])

    _one_line_error(capsys, variant("trunc", truncate), out, "truncated")

    def to_bin(folder):
        (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.bin")

    _one_line_error(capsys, variant("bin", to_bin), out, ".bin weights")
    assert not out.exists()


def test_pipeline_folder_layout(tmp_path):
    """A pipeline folder as DDPMPipeline.save_pretrained writes it (model_index.json, unet/, scheduler/) loads like a
    flat folder. (Written component by component: importing diffusers' pipelines is slow.)"""
    unet, sched = _save(tmp_path / "flat", "v_prediction")
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    sched.save_pretrained(tmp_path / "pipe" / "scheduler")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
         "scheduler": ["diffusers", "DDPMScheduler"]}))
    assert (tmp_path / "pipe" / "model_index.json").is_file()
    a, info = load_diffusers(tmp_path / "pipe")
    b, _ = load_diffusers(tmp_path / "flat")
    assert info["diffusers"]["prediction_type"] == "v_prediction"
    x, sigma = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.tensor([0.3, 30.0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(a(x, sigma), b(x, sigma))
