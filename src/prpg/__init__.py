"""prpg: Personalized Representation from Personalized Generation, reproducibly."""

__version__ = "0.1.0"
