"""User-facing errors shared by every part.

Anything raised as :class:`MaskrtError` is a problem with the user's input (a file, a flag, a
request) and is reported as one clear line, never as a traceback.
"""


class MaskrtError(Exception):
    """An error the user can fix; the message names the file or value and the problem."""


def describe(exc: BaseException) -> str:
    """``exc`` for a log line or an answer: a MaskrtError's own message (it already says what to
    fix), else the exception's type and message (a library's error, whose type says much)."""
    return str(exc) if isinstance(exc, MaskrtError) else f"{type(exc).__name__}: {exc}"
