"""The toybox model zoo: tiny stand-ins for Stable Diffusion 1.5 and DINOv2 that this project
pretrains itself on the toybox pool, ships under models/toybox/, and quality-gates."""
