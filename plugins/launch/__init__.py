"""launch plugins: where a study's trials run (local worker processes, submitit)."""
