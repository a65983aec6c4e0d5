"""The one exception type users see.

Every mistake a user can make (a missing path, an empty folder, a file that is not a
checkpoint) raises :class:`CnnkitError` with a message that names the file and the fix.
The command line prints that message on one line and exits with code 2.
"""


class CnnkitError(Exception):
    """A problem with the user's input that the user can fix."""
