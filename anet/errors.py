"""Errors a user can fix. The CLI prints their message as one line, without a traceback."""


class UserError(Exception):
    """A mistake in the user's input (path, layout, value, missing data or credentials).

    The message is the single line the user sees: it names the file, line, field or URL and says
    what to do.
    """
