"""User-facing errors shared by every part.

Anything raised as :class:`MaskrtError` is a problem with the user's input (a file, a flag, a
request) and is reported as one clear line, never as a traceback.
"""


class MaskrtError(Exception):
    """An error the user can fix; the message names the file or value and the problem."""
