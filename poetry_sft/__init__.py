"""poetry_sft: fine-tune Qwen3 into a classical Chinese poet with TRL + Hydra.

The folders are the pipeline's layers, each importing only the layers below it (tests/test_architecture.py):

    errors, paths, atomic   the foundation: user errors, where files live, whole-or-nothing writes
    poetry/     the domain: forms, 平水韵 rhyme, 平仄, metrics, the prosody critic (imports nothing else)
    config/     the typed run config (schema), its rules, prompt templates, Hydra composition
    data/       poem files -> cleaned, prompted, tokenised train/eval sets
    model/      loading (LoRA/QLoRA/full), random-init test models, the memory plan, the doctor
    run/        a run directory: its files, lock, saved config, model card
    evaluate/   writing poems (sampling, best-of-N, constrained), scoring, the before/after report
    train/      SFT, GRPO and rejection-sampling stages, the Hydra train command, sweeps
    ship/       merge, GGUF/Ollama export, Hub upload
    studio/     the web page over all of the above
    cli.py      `poetry-sft <verb>`: dispatches to each layer's commands

`evaluate/` sits below `train/` because training uses it: the eval callback writes and scores poems
mid-training, a run ends with its report, and the GRPO stage's rewards are the critic's.
"""
