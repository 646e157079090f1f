"""python -m poetry_sft method=qlora hardware=4gb ...  (see conf/config.yaml)"""

from poetry_sft.cli import main

if __name__ == "__main__":
    main()
