"""One module per `livediff` sub-command; each exposes `register(subparsers)`.

`COMMANDS` lists them in the order `livediff --help` shows them.
"""
import importlib

COMMANDS = ["ui", "webcam", "images", "restyle_video", "eval", "engines", "doctor"]


def load_command_modules():
    return [importlib.import_module(f"livediff.app.commands.{name}") for name in COMMANDS]
