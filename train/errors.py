"""The one exception type a training run reports as a short message instead of a traceback."""

from __future__ import annotations


class TrainingError(Exception):
    """A problem the user can fix (bad input, unwritable folder, incompatible resume); the message
    names the file or argument at fault. `train/main.py` prints it and exits with status 1."""


def clean_message(error: BaseException) -> str:
    """The message of `error` without the worker traceback that a DataLoader worker prepends
    when it re-raises an exception in the main process: the text after the last
    `<ExceptionName>: ` line of that traceback."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    lines = text.rstrip().splitlines()
    prefix = f"{type(error).__name__}: "
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(prefix):
            return "\n".join([lines[i][len(prefix) :], *lines[i + 1 :]])
    return lines[-1]
