"""The one exception type a user can provoke.

Its message is one line that says what went wrong and what to do; the CLI prints it as is and
exits non-zero, and a Prefect run fails with it as the reason.
"""


class RecsError(Exception):
    """A failure caused by input or environment (bad file, bad URL, database down), not a bug."""
