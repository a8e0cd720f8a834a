"""Errors raised by :mod:`amsim.data`. Each message names the problem and how to fix it."""

from .._errors import AmsimError


class DatasetNotFoundError(AmsimError, FileNotFoundError):
    """The files of a dataset are in none of the searched places."""


class DatasetCorruptError(AmsimError, ValueError):
    """Dataset files were found but their checksum, header or contents are wrong."""
