"""Training: losses, augmentation, EMA and the training loop (Karras et al. 2022, EDM)."""

from diffspace.train.config import TrainConfig
from diffspace.train.ema import EMA, ema_beta
from diffspace.train.loop import train
from diffspace.train.loss import LOSSES, EDMLoss, Loss, VELoss, VPLoss, build_loss

__all__ = ["EMA", "EDMLoss", "LOSSES", "Loss", "TrainConfig", "VELoss", "VPLoss", "build_loss", "ema_beta", "train"]
