"""User-facing errors: each one is printed as a single line naming the input and what is wrong."""


class AttnHashError(Exception):
    """Base class: bad input, corrupted files, incompatible checkpoints. The CLI prints it without a traceback."""


class DataError(AttnHashError, ValueError):
    """A dataset, list file, image or split file is missing, unreadable or inconsistent."""


class CheckpointError(AttnHashError, ValueError):
    """A run folder or checkpoint is missing, corrupted, or does not match what is asked of it."""


class IndexFileError(AttnHashError, ValueError):
    """An index file is corrupted, truncated, or was built by another model."""


class ConfigError(AttnHashError, ValueError):
    """A configuration value is unknown or out of range."""


class NotFoundError(AttnHashError, LookupError):
    """An item, file or resource asked for by id or name does not exist."""


class InvalidRequestError(AttnHashError, ValueError):
    """A request's parameters are out of range or inconsistent (k, radius, labels per image, ...)."""


class UnavailableError(AttnHashError):
    """The service cannot do this now (no model loaded, saturated); the request may be retried."""


class ConflictError(AttnHashError):
    """Another writer holds or has changed what this one meant to change (an index file in use, replaced)."""


class StorageError(AttnHashError):
    """A file could not be written (disk full, no permission, quota reached); what was being changed is not."""
