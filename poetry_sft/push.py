"""`python -m poetry_sft.push` from older scripts: the same as `poetry-sft push`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("push"))
