"""Mask propagation: DeAOT-family models and the per-video engine."""
