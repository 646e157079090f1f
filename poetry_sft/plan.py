"""`python -m poetry_sft.plan` from older scripts: the same as `poetry-sft plan`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("plan"))
