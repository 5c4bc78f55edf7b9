"""What a shared-state call can end with, besides an answer (raised by `RedisLink.call`)."""


class StateUnavailableError(Exception):
    """Redis did not answer (in time); the caller falls back to local state or fails closed."""


class StateCallFailed(StateUnavailableError):
    """Redis answered this one call with an error (a script error, OOM): the caller decides this request
    per its fail mode, as in an outage, but the link stays up."""
