"""Output paths checked before any model loads: a mistake in `-o` costs a second, not a finished run.

Each check names the path the user typed and the fix in one sentence (`InputError`). Writability is
tried, not guessed from permission bits: the folder is created (the command would create it anyway)
and a scratch file is opened in it, so read-only mounts, full quotas and root on /proc all answer
the same way the real write would.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from livediff.errors import InputError


def image_suffixes() -> list[str]:
    """Extensions Pillow can write, lower case, e.g. ['.bmp', '.jpeg', '.jpg', '.png', ...]."""
    from PIL import Image

    Image.init()
    return sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)


def write_problem(folder: Path) -> OSError | None:
    """Why nothing can be written in `folder` (created if missing, then a scratch file opened there), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc
    return None


def writable_folder(folder: Path, typed: str) -> Path:
    """`folder`, created if missing; refused in one sentence when nothing can be written there."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"-o {typed}: {folder} is a file, not a folder; choose a folder to write into")
    problem = write_problem(folder)
    if problem is not None:
        raise InputError(f"-o {typed}: cannot write in {folder} ({problem.strerror or problem}); "
                         f"choose a folder you can write to")
    return folder


def image_output(typed: str) -> Path:
    """The path of one output image, checked: a known image extension in a writable folder."""
    path = Path(typed)
    if path.is_dir():
        raise InputError(f"-o {typed} is a folder; give an image file name such as {path / 'result.png'}")
    suffixes = image_suffixes()
    if path.suffix.lower() not in suffixes:
        found = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise InputError(f"-o {typed} has {found}; image outputs end in one of {', '.join(suffixes)} "
                         f"(for example {path.with_suffix('.png')})")
    writable_folder(path.parent, typed)
    return path


def image_folder_output(typed: str) -> Path:
    """The folder several output images go to, checked (created if missing)."""
    path = Path(typed)
    if path.suffix.lower() in image_suffixes() and not path.is_dir():
        raise InputError(f"-o {typed} looks like one image, but the input is a folder of images; "
                         f"give a folder for the outputs")
    return writable_folder(path, typed)
