"""Errors for bad input. The CLI prints their message on one line and exits with code 2."""


class BnrankError(Exception):
    """Bad input from the user: a config, data, a file or a model bnrank cannot use."""


class ConfigError(BnrankError):
    """A config that does not validate."""


class DataError(BnrankError):
    """Data with the wrong shape, dtype or non-finite values."""


class ModelError(BnrankError):
    """A model bnrank cannot convert or analyze."""


class StoreError(BnrankError):
    """A run or sweep directory that is missing, incomplete or corrupt."""


class WriteError(StoreError):
    """A file or directory the file system refused to write (read-only, no permission, full)."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason


class WorkerError(BnrankError):
    """A worker running part of a sweep (a Ray task, a pool process) that failed for good; the
    work finished before it is kept. Not bad input: the CLI exits with code 1."""
