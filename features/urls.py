"""Database URLs as shown in messages, reports and MLflow: every password hidden."""

from __future__ import annotations

import re
from typing import Any

#: query parameters that carry a secret (libpq's ``password``, ``sslpassword``, ...)
_SECRET_PARAM = re.compile(r"pass(word|wd)?$|pwd$|secret|token", re.IGNORECASE)
_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_QUERY_SECRET = re.compile(r"([?&][^=&#\s]*(?:pass(?:word|wd)?|pwd|secret|token)[^=&#\s]*=)"
                           r"[^&#\s]*", re.IGNORECASE)
_HIDDEN = "***"


def masked_url(url: Any) -> str:
    """``url`` (a string or a SQLAlchemy ``URL``) with the password of ``user:password@``
    and of any secret query parameter (``?password=...``) replaced by ``***``. A string
    that does not parse as a URL is masked by pattern."""
    from sqlalchemy.engine import URL, make_url

    try:
        parsed = url if isinstance(url, URL) else make_url(str(url))
    except Exception:  # not a URL SQLAlchemy reads: mask what looks like a password
        return _QUERY_SECRET.sub(rf"\g<1>{_HIDDEN}", _USERINFO_PASSWORD.sub(
            rf"\g<1>{_HIDDEN}@", str(url)))
    secret = {k: _HIDDEN for k in parsed.query if _SECRET_PARAM.search(k)}
    shown = _readable(parsed.set(query={**parsed.query, **secret}))
    return shown.replace("%2A%2A%2A", _HIDDEN)


def _readable(url: Any) -> str:
    """``url`` (a SQLAlchemy ``URL``) as text, password hidden, its database as typed.

    Written by hand because SQLAlchemy's ``render_as_string`` percent-escapes the database's
    non-ASCII characters and colons but not its spaces (``sqlite:////home/u/w%C3%B6rk
    dir/lifecast_store.db``), a path nobody typed, while MLflow's store and
    `CustomerStore.default_url` show it plain. Only what ``make_url`` would read otherwise is
    escaped (``%``, as it unquotes the database, and ``?``, where the query starts), so the
    text shown, given back as a URL, names the same database."""
    from sqlalchemy.engine import URL

    rest = URL.create(url.drivername, url.username, url.password, url.host, url.port,
                      None, url.query).render_as_string(hide_password=True)
    if url.database is None:
        return rest
    # the user name and password are escaped and a host has no '?': the first one starts
    # the query
    head, mark, query = rest.partition("?")
    database = url.database.replace("%", "%25").replace("?", "%3F")
    return f"{head}/{database}{mark}{query}"


def driver_hint(url: Any) -> str:
    """What to do when SQLAlchemy cannot load the database driver (or dialect) of ``url``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(str(url)) if not hasattr(url, "drivername") else url
    except (ArgumentError, ValueError):
        return ("Check the URL: a database URL looks like sqlite:///path/file.db or "
                "postgresql+psycopg://user@host:5432/db.")
    backend = parsed.get_backend_name()
    try:
        driver = parsed.get_driver_name()
    except Exception:  # not a database kind SQLAlchemy knows
        return (f"SQLAlchemy knows no database kind {backend!r}: check the URL's scheme, e.g. "
                f"sqlite:///path/file.db or postgresql+psycopg://user@host:5432/db.")
    if backend == "postgresql" and driver == "psycopg":
        return "Install its driver: pip install 'lifecast[postgres]' (psycopg 3)."
    if backend == "postgresql":
        return (f"lifecast installs psycopg 3, not {driver}: write the URL as "
                f"postgresql+psycopg://... (pip install 'lifecast[postgres]'), or install "
                f"{driver} yourself.")
    return (f"Install the {backend} driver {driver!r} SQLAlchemy uses for this URL "
            f"(pip install it), or name an installed one as {backend}+<driver>://.")
