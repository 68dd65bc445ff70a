"""The one error type users see: a bad config, path or value.

The CLI turns it into a single line on stderr and exit status 2 (no traceback). Messages start
with the offending field or path so the user knows exactly what to edit.
"""


class ConfigError(ValueError):
    """Bad user input: raised with a one-line message that names the field or path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")
