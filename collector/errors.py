"""Errors shared by the config loader and every package whose settings it decodes."""


class ConfigError(Exception):
    """A config file that cannot be used; the message names file, key path and problem."""
