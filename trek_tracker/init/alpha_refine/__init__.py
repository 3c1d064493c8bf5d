"""Alpha-Refine, our PyTorch port: the seg384 mask network and SEcm, crop geometry, precise RoI pooling
and official checkpoint reading (docs/init.md#alpha-refine-networks)."""
