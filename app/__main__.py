"""`python -m app` starts the browser UI, like `livediff ui`."""
import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
