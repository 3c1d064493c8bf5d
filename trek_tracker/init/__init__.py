"""Box to mask: SAM, Alpha-Refine, their fusion, and weight-free fallbacks."""
