"""The one exception type for problems a user can fix (bad file, wrong scale, missing tool)."""


class CompsrtError(Exception):
    """A user-fixable problem; the message says which file, what is wrong and what to do.

    CLIs catch it and print one line with exit code 2; library callers can catch it too.
    """
