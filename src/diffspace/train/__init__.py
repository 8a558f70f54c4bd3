"""Training: losses, augmentation, EMA and the training loop (spec section 1.6)."""
