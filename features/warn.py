"""Warnings attributed to the caller's line, not to lifecast's own code."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

#: The folders of lifecast's packages (features, training, serving): frames in them are
#: skipped when a warning looks for the line to blame.
_OWN = tuple(str(Path(__file__).resolve().parent.parent / pkg) + "/"
             for pkg in ("features", "training", "serving"))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn` with the stack level of the first frame outside lifecast.

    A user calling ``build_features`` sees the warning at their own call, whatever depth
    inside lifecast raised it. Python 3.12's ``skip_file_prefixes`` does this; lifecast
    supports 3.11, so the frames are walked here."""
    frame, level = sys._getframe(1), 2  # level 1 is this function, 2 its caller
    while frame is not None and frame.f_code.co_filename.startswith(_OWN):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
