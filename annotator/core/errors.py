"""Every error a user can fix, under one base class.

The CLIs turn a `VaemoError` into a one-line message (it names the thing and the fix) and exit
code 1; anything else is a bug and raises with its traceback. Per-clip errors (`MediaError`,
`PromptError`) become that clip's failed row instead of stopping a run.

`ConfigError` and the others also derive from `ValueError`, so a pydantic validator that
raises one reports it as a validation error of the field.
"""

from __future__ import annotations


class VaemoError(Exception):
    """Base of the errors the user can act on."""


class ConfigError(VaemoError, ValueError):
    """A setting, a config file, a model folder or a run folder that cannot be used."""


class ManifestError(VaemoError, ValueError):
    """The manifest cannot be used; the message names the file, the rows and the fix."""


class MediaError(VaemoError):
    """A clip that cannot be read; becomes a failed row with error_kind 'media'."""


class PromptError(VaemoError, ValueError):
    """A template that cannot be loaded or rendered; the message says which and why."""


class RulesError(VaemoError, ValueError):
    """An audit rules file that cannot be used."""


class DataError(VaemoError, ValueError):
    """Descriptions that cannot feed the injection trainer."""


class EncoderError(VaemoError, ValueError):
    """A VA encoder that cannot be loaded, run or written back."""


class FinetuneError(VaemoError, ValueError):
    """An encoder that the chosen --mode cannot fine-tune."""
