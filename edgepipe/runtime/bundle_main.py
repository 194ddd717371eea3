"""Copied to a bundle's top level as __main__.py, so that ``python <bundle> ...`` runs it."""

import sys
from pathlib import Path

from edgepipe_runtime.cli import main

if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().parent))
