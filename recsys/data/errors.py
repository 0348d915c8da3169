"""Errors about input data. Each message names the file and what was expected."""


class InputDataError(Exception):
    """Base class: the input corpus cannot be used as it is."""


class InputFileError(InputDataError):
    """A required file is missing or empty, or the path is not a MovieLens release."""


class HeaderError(InputDataError):
    """A file's header line is not the one its layout defines."""


class RejectThresholdError(InputDataError):
    """More rows were quarantined than the configured fraction allows."""


class ShrunkInputError(InputDataError):
    """The release has far fewer users or ratings than the latest preprocess run had."""
