"""A run directory: its file layout, saved config, checkpoints and finished marker (artifacts), the lock
of the process training in it (lock), and its model card (model_card)."""
