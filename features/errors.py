"""What kind of failure an error is, for the command line's exit code.

The `lifecast` commands exit 2 for a failure a person has to fix (the input, a flag, a URL,
a password, a privilege) and `EX_TEMPFAIL` for one that is temporary by nature (a database
or tracking server that does not answer, a lock held by someone else): a scheduler (cron,
Airflow, a Kubernetes Job) retries the second kind later and alerts on the first.

Each source of such errors decides the kind in one place and raises an error class that
mixes in `TemporaryFailure` (`training.store.StoreUnreachableError`,
`training.tracking.TrackingServerUnreachableError`, ...); `features.cli.run_cli` maps the
mixin to the exit code.
"""

from __future__ import annotations

#: sysexits.h's EX_TEMPFAIL: "temporary failure, indicating something that is not really an
#: error ... the user is invited to retry the operation later".
EX_TEMPFAIL = 75


class TemporaryFailure(Exception):
    """Mixin of the errors that are temporary by nature: running the same command again
    later, unchanged, may succeed. Combine it with the error class callers already catch,
    e.g. ``class StoreUnreachableError(StoreUnavailableError, TemporaryFailure)``."""


def temporary_message(message: str) -> str:
    """``message`` as the command line prints a `TemporaryFailure`: saying it is temporary."""
    text = message.rstrip()
    if not text.endswith((".", "?", "!")):
        text += "."
    return f"{text} This is temporary: running the command again later may succeed"
