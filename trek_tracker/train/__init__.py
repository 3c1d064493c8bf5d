"""Training: data, augmentation, losses, the unrolled step, DDP."""
