"""python -m poetry_sft <verb> ...: the same as the `poetry-sft` command (poetry_sft/cli.py)."""

import sys

from poetry_sft.cli import main

if __name__ == "__main__":
    sys.exit(main())
