"""Errors a user can fix. The CLI prints their message as one line, without a traceback."""

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input (path, layout, value, missing data or credentials).

    The message is the single line the user sees: it names the file, line, field or URL and says
    what to do.
    """


def run_guarded(call: Callable[[], int | None], interrupted: str) -> int:
    """Run a command's body: a user mistake becomes one ``error:`` line and exit status 2, Ctrl-C
    prints ``interrupted`` and exits 130; anything else is a bug and keeps its traceback."""
    try:
        return int(call() or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {interrupted}", file=sys.stderr)
        return 130
