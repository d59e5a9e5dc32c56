"""Exception types for bad input, caught by type (never by message text) where a run goes on with the rest."""

from __future__ import annotations


class InputError(Exception):
    """Bad input that the user owns (a file, a list line, an option): reported with its item, never a bug."""


class DatabaseError(InputError):
    """A database (folder, reader, record) that cannot be used: the run cannot start."""


class QueryError(InputError):
    """One query that cannot be localized (unreadable image, no camera): reported, the run goes on."""


class PairsError(InputError):
    """A pairs file (shortlist) or pair-keyed match file whose names do not resolve to the run's images."""


class ConfigError(InputError, ValueError):
    """A configuration with an unknown key or an invalid value."""


class CheckpointError(InputError):
    """A weight file that cannot be loaded safely or does not fit the model."""


class OutputError(InputError):
    """An export folder that cannot be used: another run holds it, or its outputs would overwrite inputs."""


class WorkerLostError(RuntimeError):
    """A worker process died while running one item, more often than it may be retried."""


# failures of one item (one query, one pair) that are reported with the item while the run goes on;
# any other exception is a programming error and propagates
PER_ITEM_ERRORS = (InputError, OSError, WorkerLostError)
