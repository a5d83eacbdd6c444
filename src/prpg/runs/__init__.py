"""Running the pipeline: `prpg repro` (repro), named experiments (experiments), experiments in parts and
their saved results (results), and GPUs or a SLURM cluster (cluster)."""
