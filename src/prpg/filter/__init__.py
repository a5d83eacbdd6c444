"""Stage "filter": keep the synthesized positives that look like the real instance (notebooks/05_filter.py).

filtering localizes each image (dense patch similarity + Otsu, or PerSAM), crops it and keeps it when its
mean cosine to the real crops reaches the threshold; similarity holds the models that score it (DreamSim,
or a backbone's CLS)."""
