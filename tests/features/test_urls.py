"""Database URLs as messages show them (`features.urls.masked_url`)."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from features.urls import masked_url


def test_a_path_is_shown_as_typed_not_percent_escaped() -> None:
    """SQLAlchemy's rendering escaped the path's non-ASCII characters but not its spaces
    (``sqlite:////home/u/w%C3%B6rk dir/lifecast_store.db``), a path nobody typed, while the
    MLflow line beside it showed the plain one. The database part is now shown as typed."""
    for url in ("sqlite:////home/u/wörk dir/lifecast_store.db", "sqlite:///:memory:",
                "sqlite:///relative/store.db", "sqlite://",
                "postgresql+psycopg://u@h:5432/kundendaten_ü",
                "sqlite:///file:x.db?mode=ro&uri=true"):
        assert masked_url(url) == url
        assert masked_url(make_url(url)) == url
    # typed escaped, shown plain
    assert masked_url("sqlite:////tmp/w%C3%B6rk%20dir/x.db") == "sqlite:////tmp/wörk dir/x.db"


def test_the_text_shown_names_the_same_database() -> None:
    """Only what make_url would read otherwise stays escaped: '%' (it unquotes the path)
    and '?' (where the query starts)."""
    url = "sqlite:////tmp/50%25 off%3F/x.db?timeout=3"
    assert masked_url(url) == url
    assert make_url(masked_url(url)).database == "/tmp/50% off?/x.db"


def test_passwords_stay_hidden_around_a_readable_database() -> None:
    shown = masked_url("postgresql+psycopg://lifecast:s3cret@db.example:5432/wörk?"
                       "password=two&application_name=lifecast")
    assert shown == ("postgresql+psycopg://lifecast:***@db.example:5432/wörk?"
                     "application_name=lifecast&password=***")
    assert masked_url("sqlite:////tmp/p:w@x/store.db") == "sqlite:////tmp/p:w@x/store.db"
