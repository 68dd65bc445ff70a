"""The one error type users see: a bad config, path or value.

The CLI turns it into a single line on stderr and exit status 2 (no traceback). Messages start
with the offending field or path so the user knows exactly what to edit.
"""


class ConfigError(ValueError):
    """Bad user input: raised with a one-line message that names the field or path.

    ``speaker`` (multi-process runs): ``rank0`` when every rank refuses alike and rank 0 says it; ``self`` when
    this rank alone saw it (it says it, naming its rank); ``quiet`` when another rank says it."""

    def __init__(self, field: str, message: str | None = None, speaker: str = "rank0") -> None:
        self.field = field
        self.speaker = speaker
        # one argument: an already formatted text (how torch's DataLoader re-raises a worker's error)
        super().__init__(field if message is None else f"{field}: {message}")


def config_error_line(error: BaseException) -> str | None:
    """The one-line message of a ConfigError, also when a DataLoader worker raised it (torch re-raises
    it with the worker's traceback folded into the text); None for any other error."""
    if not isinstance(error, (ConfigError, RuntimeError)):
        return None
    text = str(error)
    if isinstance(error, ConfigError) and "\n" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        if line.startswith("midtrain.errors.ConfigError: "):
            return line.split(": ", 1)[1]
    return text.strip().splitlines()[-1] if isinstance(error, ConfigError) else None
