"""``python -m oxboot``: the ``oxboot`` command, for when the console
scripts are not on PATH (a venv not activated, ``pip install --user``)."""

from __future__ import annotations

import sys

from oxboot.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
