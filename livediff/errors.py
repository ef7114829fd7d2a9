"""Errors a user can act on.

Every message names the bad value and what is allowed, so the CLI and the UI can show it as
one sentence instead of a traceback.
"""


class LivediffError(Exception):
    """Base class: anything raised deliberately by livediff for the user to read."""


class ConfigError(LivediffError, ValueError):
    """A setting is out of range or two settings cannot be combined."""


class InputError(LivediffError, ValueError):
    """An input (image, frame, video file) has the wrong shape, type or content."""


class ModelNotAvailableError(LivediffError, OSError):
    """Weights cannot be found locally and cannot be downloaded."""


class AcceleratorError(LivediffError, RuntimeError):
    """A backend cannot build, load or run what was asked (never silently replaced)."""
