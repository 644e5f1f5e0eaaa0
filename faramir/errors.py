"""Exceptions of the model package (`faramir`). Each message is one line that names the file and the fix.

The cache's own errors are in `faramir.store.errors`; both derive from `FaramirError`, which the CLI turns
into one line on stderr."""

from __future__ import annotations


class FaramirError(Exception):
    """Base class of every error this project raises on purpose."""


class FaramirWarning(UserWarning):
    """Something the user must know that does not stop the command (issued with `warnings.warn`);
    the CLI prints each one once, as one line on stderr."""


class ImageLoadError(FaramirError):
    """An image file could not be read or decoded."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    @classmethod
    def from_exception(cls, path: str, ex: BaseException, size: int | None = None) -> ImageLoadError:
        name = type(ex).__name__
        text = str(ex).strip()
        if size == 0:
            return cls(path, "empty file (0 bytes); re-copy it or remove it")
        if name == "UnidentifiedImageError":
            return cls(path, "not an image format Pillow can read; convert it to PNG or JPEG")
        if "truncated" in text.lower():
            detail = text if text.startswith("image file is truncated") else f"truncated or corrupt ({text})"
            return cls(path, f"{detail}; the file is incomplete, re-copy or re-export it")
        if name == "DecompressionBombError":
            return cls(path, f"{text}; downscale it first")
        if isinstance(ex, NotRegularFile):
            return cls(path, str(ex))
        if isinstance(ex, OSError) and getattr(ex, "strerror", None):
            return cls(path, f"cannot read file: {ex.strerror}")
        return cls(path, f"{name}: {text or 'failed to decode'}")


class WeightsError(FaramirError):
    """Model weights are missing, malformed or do not match what the code expects."""


class WeightsNotFound(WeightsError):
    """The weights directory lacks files and they could not be downloaded."""


class DownloadError(WeightsError):
    """A weight file could not be fetched into place (network, HTTP status, short read, disk)."""


class InputError(FaramirError):
    """A path argument, file list or setting cannot be used."""


class NotRegularFile(OSError):
    """A path names a FIFO, socket, device or folder, not a file: it is never read."""
