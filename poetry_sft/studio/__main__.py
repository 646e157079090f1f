"""`python -m poetry_sft.studio` from older scripts: the same as `poetry-sft studio`."""

if __name__ == "__main__":
    from poetry_sft.cli import run_verb

    raise SystemExit(run_verb("studio"))
