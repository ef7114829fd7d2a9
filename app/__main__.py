"""`python -m livediff.app` starts the browser UI, like `livediff ui`."""
import sys

from livediff.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
