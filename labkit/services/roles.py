"""The roles of web accounts, apart from `labkit.services.accounts` so that ``labkit user``'s options (and
``labkit --help``) know them without importing SQLAlchemy."""

ROLES = ("instructor", "student")
