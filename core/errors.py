"""Errors a user can fix. Command-line entry points print them as one line and exit with code 2."""


class StudyInputError(Exception):
    """Bad input from the user (config, files, model/SAE mismatch): the message says what to do."""
