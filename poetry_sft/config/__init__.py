"""The run's configuration: the typed schema Hydra fills (schema), its cross-field rules (checks), the
prompt templates a config may name (templates), and composing a config as the command line does (compose).
The schema imports nothing of ours but errors."""
