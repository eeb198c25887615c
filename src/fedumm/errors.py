"""User-facing errors: the CLI prints these as one line (no traceback unless --debug)."""


class FedummError(Exception):
    """Base class for errors caused by user input (config, files, names)."""


class ConfigError(FedummError):
    """A config key is unknown, has the wrong type, or an out-of-range value."""


class DataError(FedummError):
    """Input data is missing, malformed, or cannot satisfy a request (e.g. a partition)."""


class AdapterStateError(FedummError):
    """An adapter state does not match the model it is loaded into."""


class AggregationError(FedummError):
    """A federation could not go on: too many rounds in a row without enough valid replies."""


class TrainingError(FedummError):
    """Local training failed in a way the user can act on (e.g. a non-finite loss), naming the
    client, the round and what to change."""
