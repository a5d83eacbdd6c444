"""Plumbing every stage shares: params schemas and loading (params, configs), model loading (models,
backbones), the notebook runner (notebook), atomic writes (atomic) and repository paths (paths).
Nothing here imports torch at import time except models and backbones."""
