"""`lifecast features ...` and the column-mapping flags every data command shares.

The command line only parses and calls: each command turns its flags into a
`ColumnMapping` / `FeatureConfig` and calls a function of the package.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from features.config import MAPPING_FLAGS, ColumnMapping
from features.naming import command_line, counted

app = typer.Typer(help="Validate transaction logs and build point-in-time features.",
                  no_args_is_help=True)

# Help texts of the mapping flags; the flag names live in `features.config.MAPPING_FLAGS`,
# and `with_mapping` adds them all to a command.
_MAPPING_HELP: dict[str, str] = {
    "customer_id": "Column holding the customer id.",
    "timestamp": "Column holding the event time (date or datetime).",
    "amount": "Amount column, or an expression such as 'Quantity * UnitPrice'.",
    "order_id": "Column grouping lines into orders (default: customer-day).",
    "quantity": "Quantity column (optional).",
    "product_id": "Product column (optional).",
    "category": "Category column (optional).",
    "channel": "Channel column (optional).",
    "discount": "Discount column (optional).",
    "timestamp_format": "strftime format of text timestamps, e.g. '%d/%m/%Y %H:%M'.",
    "decimal_comma": "Numbers in text columns use ',' as the decimal point and '.' or a space "
                     "between thousands, as in '1.234,50'.",
    "missing_ids": "Customer ids that stand for no customer (guest checkouts, a walk-in "
                   "account), comma-separated, e.g. '0,GUEST': their rows are dropped and "
                   "counted like rows without an id.",
}


def checked_instant(value: str | None) -> str | None:
    """Typer callback of --cutoff and --as-of: refuse a date that cannot be read before the
    log is loaded (it was said only after the load and its report), as a usage error."""
    if value is None:
        return None
    from features.contract import parse_cutoff

    try:
        parse_cutoff(value, name="")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def with_mapping(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--transactions``, ``--table``, ``--mapping FILE`` and the column flags to a
    command; the wrapped function receives ``source``, ``table`` and ``mapping``
    (a `ColumnMapping`: the YAML file, then the flags on top)."""
    sig = inspect.signature(func, eval_str=True)
    kept = [p for n, p in sig.parameters.items() if n not in ("source", "table", "mapping")]
    kw = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter(
            "transactions", kw,
            annotation=Annotated[str, typer.Option(
                "--transactions", "-t",
                help="Transactions: a .csv, .csv.gz or .parquet file, a folder or glob of "
                     "Parquet files (the parts of one log), or a database URL with --table "
                     "(duckdb:///sales.duckdb, sqlite:///sales.db, postgresql+psycopg://...).")],
        ),
        inspect.Parameter(
            "table", kw, default=None,
            annotation=Annotated[str | None, typer.Option(
                "--table", help="Table name when --transactions is a database URL.")],
        ),
        inspect.Parameter(
            "mapping_file", kw, default=None,
            annotation=Annotated[Path | None, typer.Option(
                "--mapping", help="YAML file mapping the contract's columns to yours, one "
                "'key: your column' per line; keys: " + ", ".join(MAPPING_FLAGS) + ". Flags "
                "given as well override it; a flag of '' drops an optional column.")],
        ),
    ]
    for field, flag in MAPPING_FLAGS.items():
        if ColumnMapping.model_fields[field].annotation is bool:  # a switch: --x/--no-x
            option: Any = Annotated[bool | None, typer.Option(
                f"{flag}/--no-{flag.removeprefix('--')}", help=_MAPPING_HELP[field])]
        else:
            option = Annotated[str | None, typer.Option(flag, help=_MAPPING_HELP[field])]
        extra.append(inspect.Parameter(f"map_{field}", kw, default=None, annotation=option))

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        source = kwargs.pop("transactions")
        table = kwargs.pop("table")
        mapping_file = kwargs.pop("mapping_file")
        flags = {f: kwargs.pop(f"map_{f}") for f in MAPPING_FLAGS}
        base = ColumnMapping.from_yaml(mapping_file) if mapping_file else ColumnMapping()
        mapping = base.with_overrides(**flags)
        return func(source=source, table=table, mapping=mapping, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*extra, *kept])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {}
    return wrapper


def echo_err(message: str, fg: str) -> None:
    """A message on stderr, coloured ``fg`` on a terminal unless ``NO_COLOR`` is set to
    anything but '' (no-color.org); never coloured when stderr is piped to a file or a log
    collector (click strips the codes there)."""
    typer.secho(message, fg=fg, err=True, color=False if os.environ.get("NO_COLOR") else None)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error the user can act on and return the exit to raise."""
    echo_err(f"error: {message}", typer.colors.RED)
    return typer.Exit(code)


def _a_dependency_deprecation(category: type[Warning], filename: str) -> bool:
    """A library's note to its own callers (DuckDB 2.0.1 deprecates a call Ibis 12 makes)
    is nothing a user of the command can act on, and Python hides it outside `__main__`
    by default; a test runner or `-W default` turns it back on, so drop it here."""
    if not issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
        return False
    ours = {Path(__file__).resolve().parents[1] / pkg for pkg in ("features", "training",
                                                                   "serving")}
    return not any(parent in ours for parent in Path(filename).resolve().parents)


def run_cli(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's own errors into a one-line message and exit code 2, or
    `EX_TEMPFAIL` (75) for a `TemporaryFailure` (a server that does not answer: a scheduler
    retries later); show warnings (stale data, ...) as one line each."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from features.contract import DataValidationError
        from features.errors import EX_TEMPFAIL, TemporaryFailure, temporary_message

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            if _a_dependency_deprecation(category, filename):
                return
            echo_err(f"warning: {message}", typer.colors.YELLOW)

        with warnings.catch_warnings(), command_line(), terminate_as_interrupt():
            warnings.showwarning = show  # (command_line: messages name flags, not fields)
            try:
                return func(*args, **kwargs)
            except TemporaryFailure as exc:  # before ValueError: some are ValueErrors too
                raise fail(temporary_message(str(exc)), EX_TEMPFAIL) from None
            except (DataValidationError, FileNotFoundError, ValueError, LookupError) as exc:
                raise fail(str(exc)) from None
            except ImportError as exc:  # an optional extra that is not installed
                raise fail(str(exc)) from None
            except Exception as exc:
                full = None if isinstance(exc, typer.Exit) else disk_full(exc)
                if full is None:
                    raise
                raise fail(full) from None
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (terminate_as_interrupt)
                signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
                echo_err(interrupted_message(signum), typer.colors.RED)
                raise typer.Exit(128 + signum) from None

    return wrapper


#: What a full disk (or quota) says: the OS's errors, SQLite's (an MLflow or customer store).
_DISK_FULL = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def disk_full(exc: BaseException) -> str | None:
    """The message for an error that a full disk caused anywhere down its chain (an
    OSError ENOSPC writing an MLflow artifact, SQLite's 'database or disk is full' inside an
    MlflowException or a SQLAlchemy error), else None: a full disk is the user's to fix,
    not a traceback."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" ({cause.filename})" if cause.filename else ""
            return _disk_full_message(os.strerror(cause.errno) + where)
        text = str(cause)
        said = next((m for m in _DISK_FULL if m in text), None)
        if said is not None:
            return _disk_full_message(said)
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return None


def _disk_full_message(what: str) -> str:
    return (f"{what}: the command stopped and kept nothing half-written (an output file, a "
            f"customer-store batch, an MLflow run and its model versions are written whole "
            f"or not at all). Free space on {_disks()} and run it again")


def _disks() -> str:
    """The disks a full one may be: the working folder's, and the temporary folder's when
    that is another (a small TMPDIR, as schedulers and containers give: training writes
    its plots and model files there first, and the error, raised by a write, names no
    file), so that `df -h .` alone does not send the user to a disk with room."""
    import shlex
    import tempfile

    tmp = tempfile.gettempdir()
    try:
        same = os.stat(tmp).st_dev == os.stat(".").st_dev
    except OSError:
        same = True
    if same:
        return "the disk (`df -h .`)"
    return (f"the disks of the working folder and of the temporary folder {tmp} (`df -h . "
            f"{shlex.quote(tmp)}`), or set TMPDIR to a folder with room,")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's timeout, ``kill``, a container stopping) while a command
    runs, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs: a
    temporary file is removed, a customer-store transaction rolled back, a training run
    and its model versions taken back."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    # a second SIGTERM must not cut the clean-up the first one started short
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """For the block, SIGTERM raises `Terminated` instead of ending the process on the
    spot. Python's default for SIGTERM runs no ``finally``, no ``except``: a killed
    ``lifecast train`` left its MLflow run RUNNING forever and a killed ``lifecast
    features build`` its temporary file beside the output. Only in the main thread (the
    only one Python delivers signals to); elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_message(signum: int) -> str:
    """What a command stopped by a signal prints: which signal, and what was kept."""
    how = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    return (f"interrupted by {how}: stopped before it finished. Nothing it was writing was "
            f"kept (an output file, a customer-store batch, an MLflow run and its model "
            f"versions) and what was there before is unchanged; run the command again to "
            f"redo it")


@app.command("validate")
@run_cli
@with_mapping
def validate_cmd(*, source: str, table: str | None, mapping: ColumnMapping) -> None:
    """Check a transaction log against the data contract and print the validation report."""
    from features.contract import load_transactions

    tx = load_transactions(source, mapping, table=table)
    typer.echo(tx.report.format(duplicates=True))


@app.command("build")
@run_cli
@with_mapping
def build_cmd(
    *,
    source: str,
    table: str | None,
    mapping: ColumnMapping,
    cutoff: Annotated[str, typer.Option(help="Cutoff instant: only events before it are used.",
                                        callback=checked_instant)],
    out: Annotated[Path, typer.Option(help="Output file (.parquet, .csv or .csv.gz).")],
) -> None:
    """Build point-in-time features at a cutoff: one row per customer, written to --out."""
    from features.contract import load_transactions
    from features.pipeline import build_features
    from features.storage import check_frame_path, write_frame

    check_frame_path(out)  # a folder or an unwritable name: say so before any work
    tx = load_transactions(source, mapping, table=table)
    typer.echo(tx.report.format(), err=True)
    frame = build_features(tx, cutoff)
    write_frame(frame, out)
    typer.echo(f"wrote {counted(len(frame), 'customer')} x "
               f"{counted(frame.shape[1] - 2, 'feature')} to {out}")


@app.command("list")
def list_cmd() -> None:
    """List every feature with its meaning (the feature registry)."""
    from features.registry import feature_table_markdown

    typer.echo(feature_table_markdown())
