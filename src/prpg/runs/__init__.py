"""Running the pipeline: `prpg repro` (repro), named experiments (experiments), experiments in parts and
their saved results (results), the finished run's summary table (summary), and GPUs or a SLURM cluster
(cluster)."""
