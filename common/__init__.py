"""The only shared code: the embedded task (task), data reading and tokenizing (data), models and runs (models)."""
