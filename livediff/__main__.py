"""`python -m livediff …` is the `livediff` command (for environments without the console script)."""
import sys

from livediff.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
