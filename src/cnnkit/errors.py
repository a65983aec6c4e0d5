"""The one exception type users see.

Every mistake a user can make (a missing path, an empty folder, a file that is not a
checkpoint) raises :class:`CnnkitError` with a message that names the file and the fix.
The command line prints that message on one line and exits with code 2.
"""

import difflib
from collections.abc import Iterable


class CnnkitError(Exception):
    """A problem with the user's input that the user can fix."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to a mistyped ``word``, or ``""`` when none is close.

    Example:
        >>> did_you_mean("resnet19", ["resnet18", "vgg16"])
        " (did you mean 'resnet18'?)"
    """
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_error(error: Exception) -> str:
    """An exception's reason on one line; a YAML syntax error as its problem and where (its own text spans lines).

    Example:
        >>> describe_error(OSError("disk\\nfull"))
        'disk full'
    """
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())
