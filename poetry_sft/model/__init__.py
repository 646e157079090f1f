"""The model: loading it for a method (full, LoRA, QLoRA, ...; loading), random-init Qwen3 models and
tokenizers for tests and the demo (random_init), the memory plan (memory, plan) and the environment
check (doctor)."""
