"""Optional sign-in for the browser UI (`livediff ui --auth-file FILE`), for shared networks.

Without it the server has no authentication: anyone who can reach its address can use the model and
see nothing of other tabs' streams but can start their own. With it, Gradio asks for a user name and
password before the page or its API answers; the WebRTC offer route needs a token that only a signed-in
`/webrtc_start` call hands out. The passwords live in a file (one `user:password` per line), not on
the command line, which other users of the machine can read.
"""
from __future__ import annotations

from pathlib import Path

from livediff.errors import ConfigError


def read_auth_file(path: str) -> list[tuple[str, str]]:
    """(user, password) pairs of `path`; a missing file or a line that is not `user:password` is one sentence."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--auth-file {path!r} cannot be read ({exc.strerror})") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"--auth-file {path!r}, line {number}: write one user:password per line")
        pairs.append((user, password))
    if not pairs:
        raise ConfigError(f"--auth-file {path!r} holds no user:password line")
    return pairs
