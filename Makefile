# poetry_sft — `make help` lists the targets. Extra Hydra overrides go in ARGS:
#   make train-lora ARGS="hardware=4gb train.max_steps=500"
PY ?= python
TORCH ?= torch==2.13.0
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo plan test test-slow lint train-full train-lora train-qlora sweep sweep-report studio export

help: ## show this list
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

install: ## torch==2.13.0 first (Linux: PyPI's CUDA build; Windows: CPU-only, see README Install), then the package + test extras
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e '.[test]'

demo: ## offline CPU demo (< 1 min): tiny Qwen3 fine-tuned on the shipped poems, reloaded, poems printed
	$(PY) -m poetry_sft train recipe=demo $(ARGS)

sweep: ## small offline CPU sweep (recipes/demo_lora_sweep.yaml: rank x learning rate) -> multirun/demo_sweep/
	$(PY) -m poetry_sft train -m recipe=demo_lora_sweep hydra.sweep.dir=multirun/demo_sweep $(ARGS)

sweep-report: ## rebuild a sweep's summary (csv, md, png): make sweep-report SWEEP=multirun/<dir>
	$(PY) -m poetry_sft sweep-report $(or $(SWEEP),multirun/demo_sweep)

studio: ## the 诗坊 Poem studio on http://127.0.0.1:7860 (needs .[studio]): make studio RUNS=runs PORT=7860
	$(PY) -m poetry_sft studio --runs $(or $(RUNS),runs) --port $(or $(PORT),7860) $(ARGS)

export: ## GGUF + Ollama Modelfile of a finished run: make export RUN=runs/<run> [QUANT=q8_0] (needs .[export])
	$(PY) -m poetry_sft export $(RUN) --quant $(or $(QUANT),f16) $(ARGS)

plan: ## print the memory plan of a run without training: make plan ARGS="method=full hardware=4gb"
	$(PY) -m poetry_sft plan $(ARGS)

test: ## the default test suite: offline, CPU, a few minutes
	$(PY) -m pytest

test-slow: ## slow tests (minutes; some need ../shared/data)
	$(PY) -m pytest -m slow

lint: ## ruff lint + format check, mypy
	$(PY) -m ruff check poetry_sft tests bench
	$(PY) -m ruff format --check poetry_sft tests bench
	$(PY) -m mypy

train-full: ## full fine-tune of Qwen/Qwen3-0.6B on an 8 GB card (recipes/full_8gb.yaml)
	$(PY) -m poetry_sft train recipe=full_8gb $(ARGS)

train-lora: ## LoRA on an 8 GB card (recipes/lora_8gb.yaml)
	$(PY) -m poetry_sft train recipe=lora_8gb $(ARGS)

train-qlora: ## QLoRA on a 4 GB card (recipes/qlora_4gb.yaml)
	$(PY) -m poetry_sft train recipe=qlora_4gb $(ARGS)
