"""Stage "train": triplets of real and synthetic images (triplets) and LoRA contrastive fine-tuning of the
backbone (contrastive), notebooks/06_train.py."""
