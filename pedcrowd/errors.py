"""The one exception type for bad user input.

Library code raises :class:`PedcrowdError` with a message that names the file
(or option) and what is wrong with it. The CLI turns it into one line on
stderr and exit code 2; with ``--debug`` it shows the traceback as well.
"""


class PedcrowdError(Exception):
    """Invalid input: a missing or malformed file, an unknown option value, ..."""
