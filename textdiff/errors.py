"""The one error type users see: a one-line message, exit code 2, no traceback."""


class TextdiffError(Exception):
    """Bad input (recipe, data, CLI argument, run directory). The CLI prints it on one line and exits 2."""

    exit_code = 2

    def __str__(self) -> str:
        return " ".join(super().__str__().split())  # always one line


def warn(message: str) -> None:
    """One line on stderr, `textdiff: warning: ...`: something the user should know that does not stop the run."""
    import sys

    print(f"textdiff: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)
