"""The one error type users see: a one-line message, exit code 2, no traceback."""


class TextdiffError(Exception):
    """Bad input (recipe, data, CLI argument, run directory). The CLI prints it on one line and exits 2."""

    exit_code = 2

    def __str__(self) -> str:
        return " ".join(super().__str__().split())  # always one line
