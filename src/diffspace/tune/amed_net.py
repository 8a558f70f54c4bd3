"""AMED's predictor network: per-sample (r, c) of each `amed` step from the U-Net's bottleneck features.

The features are read by a forward hook on the last encoder block of a diffspace U-Net (SongUNet, DhariwalUNet)
during the step's first denoiser call, so they cost no evaluation and the network's parameters are untouched.
Input: the channel mean of that feature map (pooled to `feat_size`²), with sinusoidal embeddings of log σ and
log σ' through Linear + SiLU; a two-layer MLP gives r = sigmoid(·) and c = 1 + δ_c·tanh(·). It is trained on
teacher points at the grid's levels (the student restarts each step from the teacher, as in AMED), with an L2
loss through the frozen U-Net, and saved as safetensors with its grid and settings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import torch
from torch import nn

from diffspace.errors import CheckpointError, ConfigError


def find_unet(model):
    """The U-Net (a module with an `enc` ModuleDict) inside a preconditioner or wrapper, else ConfigError."""
    seen, obj = 0, model
    while obj is not None and seen < 6:
        if isinstance(getattr(obj, "enc", None), nn.ModuleDict):
            return obj
        if getattr(obj, "workers", 1) > 1:
            raise ConfigError("the AMED predictor reads features in call order: evaluate the network on one worker")
        obj = obj.__dict__.get("net", None) or obj.__dict__.get("_modules", {}).get("model", None)
        seen += 1
    raise ConfigError("the AMED predictor needs a diffspace U-Net (SongUNet or DhariwalUNet) inside the model: "
                      "use per-step constants (fit_amed) for other denoisers")


class Bottleneck:
    """Context manager: a forward hook on the U-Net's last encoder block that keeps its latest output."""

    def __init__(self, model):
        unet = find_unet(model)
        name = [k for k in unet.enc.keys() if "_block" in k][-1]
        self.module = unet.enc[name]
        self.outputs: list[torch.Tensor] = []

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda m, i, o: self.outputs.append(o.detach()))
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def take(self) -> torch.Tensor:
        """Features of the calls since the last take (batch order), then forget them."""
        out = torch.cat(self.outputs)
        self.outputs.clear()
        return out


def _embed(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(torch.arange(dim // 2, dtype=torch.float32) * -math.log(100.0) / max(dim // 2 - 1, 1))
    ang = sigma.log().float().reshape(-1, 1) * freqs.to(sigma.device)
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class AMEDPredictor(nn.Module):
    """(r, c) per sample from bottleneck features and the step's (σ, σ')."""

    def __init__(self, sigmas: Sequence[float], feat_size: int = 8, emb_dim: int = 8, hidden: int = 128,
                 delta_c: float = 0.05):
        super().__init__()
        self.config = dict(sigmas=[float(s) for s in sigmas], feat_size=int(feat_size), emb_dim=int(emb_dim),
                           hidden=int(hidden), delta_c=float(delta_c))
        self.feat_size, self.emb_dim, self.delta_c = int(feat_size), int(emb_dim), float(delta_c)
        self.register_buffer("sigmas", torch.tensor(self.config["sigmas"], dtype=torch.float64))
        self.emb_cur = nn.Linear(emb_dim, emb_dim)
        self.emb_next = nn.Linear(emb_dim, emb_dim)
        self.fc1 = nn.Linear(feat_size * feat_size + 2 * emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, 2)
        nn.init.zeros_(self.fc2.weight)  # start at r = ½, c = 1 (DPM-Solver-2)
        nn.init.zeros_(self.fc2.bias)

    def features(self, bottleneck: torch.Tensor) -> torch.Tensor:
        f = bottleneck.float().mean(dim=1, keepdim=True)
        size = min(self.feat_size, f.shape[-1])
        f = nn.functional.adaptive_avg_pool2d(f, size)
        if size < self.feat_size:
            f = nn.functional.interpolate(f, size=self.feat_size, mode="nearest")
        return f.flatten(1)

    def forward(self, bottleneck: torch.Tensor, sigma, sigma_next) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(bottleneck)
        b = f.shape[0]
        s = torch.as_tensor(sigma, dtype=torch.float64, device=f.device).expand(b)
        s_next = torch.as_tensor(sigma_next, dtype=torch.float64, device=f.device).expand(b)
        h = torch.cat([f, nn.functional.silu(self.emb_cur(_embed(s, self.emb_dim))),
                       nn.functional.silu(self.emb_next(_embed(s_next, self.emb_dim)))], dim=1)
        out = self.fc2(nn.functional.silu(self.fc1(h)))
        return torch.sigmoid(out[:, 0]), 1 + self.delta_c * torch.tanh(out[:, 1])

    # -- sampling ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, run, afs: bool = False) -> torch.Tensor:
        """The `amed` loop with per-sample (r, c) (called by the sampler with `predictor=`)."""
        x, sigmas = run.x, run.sigmas
        if len(sigmas) != len(self.sigmas) or not torch.allclose(sigmas.cpu().double(), self.sigmas, rtol=1e-6):
            levels = [round(float(s), 4) for s in self.sigmas]
            raise ConfigError(f"this AMED predictor was trained for the grid {levels}: sample on that grid "
                              "(or train one for yours)")
        shape = (-1, *[1] * (x.ndim - 1))
        with Bottleneck(run.model) as hook:
            for i in run.indices():
                sigma, sigma_next = sigmas[i], sigmas[i + 1]
                if afs and i == 0:
                    denoised = x - sigma * x / (1 + sigma**2).sqrt()
                    feat = torch.zeros(x.shape[0], 1, self.feat_size, self.feat_size, device=x.device)
                else:
                    denoised = run.denoise(x, sigma, i)
                    feat = hook.take()
                run.report(i, x, sigma, sigma, denoised)
                d = (x - denoised) / sigma
                if sigma_next == 0:
                    x = denoised
                    continue
                r, c = (v.to(x.dtype).reshape(shape) for v in self(feat, sigma, sigma_next))
                sigma_m = sigma_next**r * sigma ** (1 - r)
                x_m = x + (sigma_m - sigma) * d
                d_m = (x_m - run.denoise(x_m, sigma_m.reshape(-1), i)) / sigma_m
                hook.take()
                x = x + c * (sigma_next - sigma) * d_m
        return run.done(x)

    # -- files ------------------------------------------------------------------------------------------------

    def save(self, path) -> None:
        from safetensors.torch import save_file

        from diffspace.io.checkpoint import atomic_write

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": "diffspace-amed-predictor", "config": json.dumps(self.config)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path) -> AMEDPredictor:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error type for a malformed header
            raise CheckpointError(f"cannot read AMED predictor {path}: {e}") from None
        if meta.get("format") != "diffspace-amed-predictor":
            raise CheckpointError(f"{path} is not an AMED predictor file (written by tune.train_predictor)")
        pred = cls(**json.loads(meta["config"]))
        pred.load_state_dict(tensors)
        return pred.eval()


def load_predictor(predictor) -> AMEDPredictor:
    if isinstance(predictor, AMEDPredictor):
        return predictor
    if isinstance(predictor, str):
        return AMEDPredictor.load(predictor)
    raise ConfigError(f"predictor must be an AMEDPredictor or its file, got {type(predictor).__name__}")


def train_predictor(net, sigmas, *, shape: Sequence[int], warmup: int = 64, seed: int = 0, epochs: int = 20,
                    batch: int = 16, lr: float = 5e-3, teacher_sub: int = 4, delta_c: float = 0.05,
                    teacher: str = "ipndm", log=None) -> AMEDPredictor:
    """Train AMED's predictor for `net` (a diffspace U-Net behind its preconditioner) on the grid `sigmas`.

    Teacher points at the grid levels come from `teacher` with `teacher_sub` log-uniform sub-steps per step
    (seeds seed … seed + warmup − 1). Each epoch visits every step; the loss is the mean squared distance of
    the `amed` step from the teacher point to the next teacher point. Only the predictor is optimised.
    """
    from diffspace.geometry import record
    from diffspace.tune.gits import _latents

    find_unet(net)  # refuse other denoisers before any work
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    if float(sig[-1]) <= 0:
        raise ConfigError("train the AMED predictor on a grid ending at sigma_min > 0")
    fine = torch.cat([torch.exp(torch.linspace(float(a.log()), float(b.log()), teacher_sub + 1,
                                               dtype=torch.float64))[:-1] for a, b in zip(sig[:-1], sig[1:])]
                     + [sig[-1:]])
    lat = _latents(shape, range(seed, seed + warmup))
    with torch.no_grad():
        traj = record(teacher, net, lat * fine[0], fine, disable=True)
    points = traj.x[::teacher_sub].float()  # [steps + 1, warmup, ...]
    pred = AMEDPredictor(sig, delta_c=delta_c)
    opt = torch.optim.Adam(pred.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    steps = len(sig) - 1
    shape_b = (-1, *[1] * (points.ndim - 2))
    with Bottleneck(net) as hook:
        for epoch in range(epochs):
            total = 0.0
            for i in range(steps):
                s, s_next = float(sig[i]), float(sig[i + 1])
                idx = torch.randperm(warmup, generator=g)[:batch]
                x, target = points[i, idx], points[i + 1, idx]
                with torch.no_grad():
                    d = (x - net(x, torch.full((len(idx),), s))) / s
                    feat = hook.take()
                r, c = pred(feat, s, s_next)
                r, c = r.float().reshape(shape_b), c.float().reshape(shape_b)
                sigma_m = s_next**r * s ** (1 - r)
                x_m = x + (sigma_m - s) * d
                d_m = (x_m - net(x_m, sigma_m.reshape(-1))) / sigma_m
                hook.take()
                loss = (x + c * (s_next - s) * d_m - target).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs}: loss {total / steps:.4e}")
    for p in net.parameters():
        p.grad = None
    return pred.eval()
