"""Errors that reach the user as one clear line and exit code 2."""


class InputError(Exception):
    """A problem with the user's input (config, structure or data file).

    The command line prints ``mlmotex-hpc: error: <message>`` on rank 0 and exits with
    code 2, without a traceback. Messages name the key or file, the offending value and
    what is allowed.
    """

    exit_code = 2


class AgreedError(InputError):
    """An :class:`InputError` that every rank raises together, with the same message
    (exchanged, or decided on data every rank holds): printed once, by rank 0. Inside a
    region with collectives, any other InputError ends the job (it may be one rank's)."""


class JobFailed(Exception):
    """The job ends with exit code 1 after an unexpected error whose traceback one rank
    has printed already; every rank raises it so that they all leave together."""

    exit_code = 1
