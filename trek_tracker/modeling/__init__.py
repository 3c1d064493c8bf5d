"""The networks: pure ``nn.Module``s of the DeAOT family (encoders, gated propagation, decoders), their
shared base, the registry of named variants, and official checkpoint loading. No per-video state lives
here; see :mod:`trek_tracker.inference`."""
