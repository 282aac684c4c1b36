"""What every Python client program of the matrix shares (tests/client_matrix.rs sets the
environment): where pgwarden and PostgreSQL are, who to be, and the seeded table.

PGW_* is pgwarden (TLS, verified against the test CA), DIRECT_* is PostgreSQL as its
superuser. TABLE has rows (1, 'Jane', SECRET_EMAIL) and (2, 'John', 'john@example.net');
its `email` column is masked for us. A DELETE on TABLE is held until a DBA approves it
(the harness does); HELD_ID is the row id a program inserts and then deletes that way.
"""

import os

TABLE = os.environ["TABLE"]
SECRET = os.environ["SECRET_EMAIL"]
HELD_ID = int(os.environ["HELD_ID"])
IDENTITY = os.environ["IDENTITY"]

PROXY = {
    "host": os.environ["PGW_HOST"],
    "port": int(os.environ["PGW_PORT"]),
    "dbname": os.environ["PGW_DATABASE"],
    "user": os.environ["PGW_USER"],
    "password": os.environ["PGW_PASSWORD"],
    "sslmode": "verify-full",
    "sslrootcert": os.environ["PGW_CA"],
}

DIRECT = {
    "host": os.environ["DIRECT_HOST"],
    "port": int(os.environ["DIRECT_PORT"]),
    "dbname": os.environ["PGW_DATABASE"],
    "user": os.environ["DIRECT_USER"],
    "password": os.environ["DIRECT_PASSWORD"],
    "sslmode": "disable",
}


def tls_options(params):
    """libpq's TLS settings from PROXY or DIRECT (for drivers configured by keywords)."""
    return {k: params[k] for k in ("sslmode", "sslrootcert") if k in params}


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def masked_email(value):
    """The email strategy keeps the domain; the real value never arrives."""
    return isinstance(value, str) and value.endswith("***@example.com") and value != SECRET
