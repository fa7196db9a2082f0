"""One exception type for mistakes a user can fix; the CLI turns it into one line and exit code 2."""


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix, on one line."""
