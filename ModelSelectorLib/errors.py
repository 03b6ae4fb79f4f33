"""Exception types of the project.

Every error a user can cause (bad file, bad bundle, inconsistent zoo or index) is raised as a subclass of
:class:`ModelSelectorError` with a message that names the problem and what to do about it. The command
line prints that message as one line on stderr and exits non-zero; the Slicer module shows it in a dialog.
"""

from __future__ import annotations

from typing import Any, Optional


class ModelSelectorError(Exception):
    """Base class of all errors that the project reports to its users."""

    #: exit status used by the command line for this kind of error
    exit_code = 1


class InputError(ModelSelectorError):
    """An input image or file is missing, unreadable, or unsuitable (empty, NaN, wrong dimension)."""

    exit_code = 2


class DatasetError(ModelSelectorError):
    """A dataset folder or manifest is missing files or is malformed."""

    exit_code = 2


class BundleError(ModelSelectorError):
    """A MONAI bundle is malformed, fails validation, or asks for untrusted code."""

    exit_code = 3


class ZooError(ModelSelectorError):
    """The zoo folder or its catalog ``zoo.json`` is missing, corrupt, or does not hold the named model."""

    exit_code = 3


class IndexMismatchError(ModelSelectorError):
    """The prototype index is missing, corrupt, or disagrees with the zoo it belongs to."""

    exit_code = 4


class TrainingError(ModelSelectorError):
    """Training could not run (no cases, bad configuration)."""

    exit_code = 5


class OutputError(ModelSelectorError):
    """An output path cannot be written as asked (a folder where a file is needed, a wrong extension, a
    read-only file or folder)."""

    exit_code = 6


class LockedError(ModelSelectorError):
    """Another process kept a zoo or an index locked for writing longer than this one would wait."""

    #: ``EX_TEMPFAIL`` of sysexits.h: trying again later may succeed
    exit_code = 75


class Cancelled(ModelSelectorError):
    """Long work was cancelled by the user; nothing half-written was left behind."""

    exit_code = 130


class BatchCancelled(Cancelled):
    """Work on several inputs was cancelled after some were finished: their outputs are kept, and ``done`` holds
    their results (in the order given), so that a caller can report them or resume with the rest."""

    def __init__(self, message: str, done: Optional[list[Any]] = None) -> None:
        super().__init__(message)
        #: the results of the inputs finished before the cancellation
        self.done: list[Any] = list(done or [])
