"""A diffusers `UNet2DModel` and its scheduler configuration, saved with `save_pretrained`, as a denoiser.

Accepted folder layouts (nothing is downloaded, only local files are read):

- a pipeline folder: `model_index.json`, `unet/config.json` + weights, `scheduler/scheduler_config.json`;
- one folder holding both `config.json` + weights (`unet.save_pretrained(dir)`) and `scheduler_config.json`
  (`scheduler.save_pretrained(dir)`).

Weights are read from `diffusion_pytorch_model.safetensors` (or its sharded index) and loaded strictly: a missing
or extra tensor is an error, never a silently re-initialised layer. `.bin` weights are pickles and are refused.
The ᾱ table comes from the scheduler class named in `scheduler_config.json` (DDPM, DDIM, PNDM, Euler, DPM-Solver,
… — any of diffusers' discrete VP schedulers), and `prediction_type` from the same file. What the scheduler does
at sampling time (`clip_sample`, `thresholding`, `timestep_spacing`, …) is ignored: a diffspace sampler and grid
replace it, and diffspace never clips.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from diffspace.errors import CheckpointError, ConfigError

__all__ = ["VP_SCHEDULERS", "is_diffusers_folder", "load_diffusers"]

# diffusers scheduler classes whose `alphas_cumprod` is a discrete VP table indexed by the UNet's timestep.
VP_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler", "SASolverScheduler",
)
_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _folders(path: Path) -> tuple[Path, Path] | None:
    """(unet folder, scheduler folder) of a diffusers folder, or None when `path` is not one."""
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
        return path / "unet", path / "scheduler"
    if (path / "config.json").is_file() and ((path / "scheduler_config.json").is_file()
                                             or (path / _WEIGHTS).is_file()):
        return path, path
    return None


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """True for a folder written by diffusers' save_pretrained (pipeline, or UNet + scheduler side by side)."""
    return _folders(Path(path)) is not None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a diffusers folder needs the {what} saved with save_pretrained")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


def _alphas_cumprod(config: dict, path: Path) -> torch.Tensor:
    name = config.get("_class_name")
    if name is None:
        raise CheckpointError(f"{path} names no scheduler (_class_name missing): re-save it with save_pretrained")
    if name not in VP_SCHEDULERS:
        raise CheckpointError(f"{path}: scheduler type {name!r} is not a discrete VP scheduler diffspace can wrap; "
                              f"supported: {', '.join(VP_SCHEDULERS)}")
    import diffusers

    try:
        scheduler = getattr(diffusers, name).from_config(config)
    except Exception as e:  # diffusers raises NotImplementedError/ValueError for bad beta schedules
        raise CheckpointError(f"{path}: diffusers cannot build {name} from it ({type(e).__name__}: {e})") from None
    return torch.as_tensor(scheduler.alphas_cumprod)


def _state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file

    index = folder / f"{_WEIGHTS}.index.json"
    if (folder / _WEIGHTS).is_file():
        files = [folder / _WEIGHTS]
    elif index.is_file():
        files = [folder / f for f in sorted(set(_read_json(index, "weight index").get("weight_map", {}).values()))]
    elif list(folder.glob("*.bin")):
        raise CheckpointError(f"{folder} holds .bin weights (pickles, which diffspace does not load): re-save the "
                              "model with save_pretrained(..., safe_serialization=True)")
    else:
        raise CheckpointError(f"{folder} has no {_WEIGHTS}: save the UNet with save_pretrained")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as e:
            raise CheckpointError(f"{f} is unreadable or truncated ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    return state


class _UNetCall(nn.Module):
    """model(X, t, class_labels) for the VP wrapper: one-hot labels -> class indices, a zero row -> null class."""

    def __init__(self, unet: nn.Module, label_dim: int, null_class: int | None, out_channels: int):
        super().__init__()
        self.unet, self.label_dim, self.null_class, self.out_channels = unet, label_dim, null_class, out_channels

    def forward(self, x, t, class_labels=None):
        kwargs = {}
        if self.label_dim:
            if class_labels is None:
                labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
            else:
                labels = torch.as_tensor(class_labels, device=x.device).reshape(-1, self.label_dim)
                labels = labels.expand(x.shape[0], -1) if labels.shape[0] == 1 else labels
            index = labels.argmax(1)
            null = labels.abs().sum(1) == 0
            if bool(null.any()):
                if self.null_class is None:
                    raise ConfigError("an all-zero class label (classifier-free guidance's unconditional branch) "
                                      "was given to a diffusers UNet without a null class: load it with "
                                      "load_diffusers(..., null_class=INDEX), or use autoguidance (--guidance-net)")
                index = torch.where(null, torch.full_like(index, self.null_class), index)
            kwargs["class_labels"] = index
        out = self.unet(x, t, return_dict=False, **kwargs)[0]
        return out[:, : self.out_channels]


def load_diffusers(path: str | os.PathLike, *, timestep: str = "interpolate", null_class: int | None = None,
                   device: str | torch.device = "cpu"):
    """(denoiser, info) of a diffusers folder: a `DiscreteVP` around its UNet2DModel, in eval mode.

    `timestep`: 'interpolate' or 'nearest' (see diffspace.external.vp). `null_class`: the class index an all-zero
    label (classifier-free guidance's unconditional branch) maps to, for class-conditional UNets.
    """
    from diffspace.external.vp import PREDICTIONS, DiscreteVP

    path = Path(path)
    folders = _folders(path)
    if folders is None:
        raise CheckpointError(f"{path} is not a diffusers folder: expected config.json + scheduler_config.json "
                              "or a pipeline folder with unet/ and scheduler/")
    unet_dir, sched_dir = folders
    unet_config = _read_json(unet_dir / "config.json", "UNet config")
    sched_config = _read_json(sched_dir / "scheduler_config.json", "scheduler config")
    if unet_config.get("_class_name") != "UNet2DModel":
        raise CheckpointError(f"{unet_dir / 'config.json'} describes a {unet_config.get('_class_name')!r}: "
                              "diffspace wraps diffusers UNet2DModel networks only")
    prediction = sched_config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"{sched_dir / 'scheduler_config.json'}: prediction_type {prediction!r} is not one of "
                              f"{', '.join(PREDICTIONS)}")
    if unet_config.get("class_embed_type") is not None:
        raise CheckpointError(f"class_embed_type {unet_config['class_embed_type']!r} is not supported: only "
                              "UNets with num_class_embeds (class-index embeddings) or unconditional ones")
    alphas_cumprod = _alphas_cumprod(sched_config, sched_dir / "scheduler_config.json")
    from diffusers import UNet2DModel

    try:
        unet = UNet2DModel.from_config(unet_config)
    except Exception as e:
        raise CheckpointError(f"cannot build UNet2DModel from {unet_dir / 'config.json'} ({type(e).__name__}: "
                              f"{e})") from None
    try:
        unet.load_state_dict(_state_dict(unet_dir), strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(f"{unet_dir}: weights do not fit the UNet2DModel config: "
                              f"{detail[:300] + (' ...' if len(detail) > 300 else '')}") from None
    size = unet.config.sample_size
    size = size if isinstance(size, int) else tuple(size)
    if not isinstance(size, int) and (len(size) != 2 or size[0] != size[1]):
        raise CheckpointError(f"sample_size {list(size)}: diffspace generates square images only")
    res = size if isinstance(size, int) else size[0]
    channels = int(unet.config.in_channels)
    out_channels = int(unet.config.out_channels)
    if out_channels not in (channels, 2 * channels):  # 2C: learned variance, the first C channels are the mean
        raise CheckpointError(f"UNet has {out_channels} output channels for {channels} input channels")
    label_dim = int(unet.config.num_class_embeds or 0)
    if null_class is not None and not 0 <= null_class < max(label_dim, 1):
        raise ConfigError(f"null_class={null_class} is out of range for a UNet with {label_dim} classes")
    model = _UNetCall(unet, label_dim, null_class, channels)
    net = DiscreteVP(model, alphas_cumprod, prediction=prediction, timestep=timestep, label_dim=label_dim,
                     img_shape=(channels, res, res))
    info = {"data": {"shape": [channels, res, res], "label_dim": label_dim},
            "diffusers": {"scheduler": sched_config["_class_name"], "prediction_type": prediction,
                          "num_train_timesteps": len(alphas_cumprod), "timestep": timestep}}
    return net.eval().requires_grad_(False).to(device), info
