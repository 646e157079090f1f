"""poetry_sft: fine-tune Qwen3 into a classical Chinese poet with TRL SFTTrainer + Hydra."""
