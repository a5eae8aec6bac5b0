"""Errors that the CLI turns into one-line reasons and a non-zero exit."""


class LineguardError(Exception):
    """Base for errors a user can act on; the message is the whole story."""


class BundleError(LineguardError):
    """A bundle that cannot be used: names the file and what is wrong with it."""


class InputError(LineguardError):
    """An image, frame or argument that cannot be used."""
