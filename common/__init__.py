"""The only shared code: the embedded task (task), data (data), models and LoRA (models), sampling (sampling),
reward scoring (scoring), and a run's plumbing: torchrun, flags, logs (runs)."""
