"""psycopg 3 through pgwarden: driven by tests/client_matrix.rs (see matrix_common.py for the
environment). Every check raises on failure; the last line printed is "ok".
"""

import threading
import time

import psycopg
from psycopg import errors

from matrix_common import DIRECT, HELD_ID, PROXY, TABLE, check, masked_email


def rows(params, query, cursor_factory=None, binary=False):
    with psycopg.connect(**params, autocommit=True) as conn:
        cur = conn.cursor() if cursor_factory is None else cursor_factory(conn)
        cur.execute(query, binary=binary)
        return cur.fetchall()


with psycopg.connect(**PROXY, autocommit=True) as conn:
    check(conn.info.parameter_status("server_version"), "server_version reported")
    check(conn.pgconn.ssl_in_use, "TLS to pgwarden")
    user = conn.execute("SELECT current_user").fetchone()[0]
    check(user == "app_rw", f"signed in upstream as {user}")

    # Simple (client-side binding) and extended protocol, text and binary results: the same
    # rows as a direct connection for columns that are not masked.
    query = f"SELECT id, name, now() IS NOT NULL AS t FROM {TABLE} ORDER BY id"
    direct = rows(DIRECT, query)
    for factory in (None, psycopg.ClientCursor):
        for binary in (False, True):
            if factory is psycopg.ClientCursor and binary:
                continue
            got = rows(PROXY, query, factory, binary)
            check(got == direct, f"{factory} binary={binary}: {got} != {direct}")

    # A masked column loads as an ordinary string, in text and in binary.
    for binary in (False, True):
        (email,) = conn.execute(
            f"SELECT email FROM {TABLE} WHERE id = %s", (1,), binary=binary
        ).fetchone()
        check(masked_email(email), f"masked: {email}")

    # Server-side prepared statements (psycopg prepares after prepare_threshold executions;
    # prepare=True at once): the mask holds on every execution.
    for i in range(8):
        (email,) = conn.execute(
            f"SELECT email FROM {TABLE} WHERE id = %s", (1,), prepare=i % 2 == 0
        ).fetchone()
        check(masked_email(email), f"masked when prepared: {email}")

    # Pipeline mode: several statements in flight; a refused one surfaces as the normal
    # error and the pipeline goes on after its sync.
    with conn.pipeline():
        c1 = conn.execute("SELECT 1")
        c2 = conn.execute(f"SELECT count(*) FROM {TABLE}")
    check(c1.fetchone() == (1,) and c2.fetchone()[0] == 2, "pipeline results")
    try:
        with conn.pipeline():
            conn.execute(f"DROP TABLE {TABLE}")
        raise AssertionError("DROP TABLE went through")
    except errors.InsufficientPrivilege as e:
        check("pgwarden" in str(e) and "guardrail" in str(e), f"pgwarden's message: {e}")
    check(conn.execute("SELECT 1").fetchone() == (1,), "usable after a refusal")

    # A refusal outside a pipeline: the driver's own error type, the session stays usable.
    try:
        conn.execute(f"DELETE FROM {TABLE}")
        raise AssertionError("DELETE without WHERE went through")
    except errors.InsufficientPrivilege as e:
        check("no_where" in str(e) or "WHERE" in str(e), f"{e}")
    check(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 2, "rows kept")

    # A held statement waits for the DBA, then completes in this session.
    conn.execute(f"INSERT INTO {TABLE} VALUES (%s, 'held', 'held@example.org')", (HELD_ID,))
    cur = conn.execute(f"DELETE FROM {TABLE} WHERE id = %s", (HELD_ID,))
    check(cur.rowcount == 1, f"held DELETE: {cur.rowcount} rows")

    # COPY in and out.
    conn.execute("CREATE TEMP TABLE copied (id int, note text)")
    with conn.cursor().copy("COPY copied FROM STDIN") as copy:
        for i in range(1000):
            copy.write_row((i, f"note {i}"))
    out = []
    with conn.cursor().copy("COPY copied TO STDOUT") as copy:
        for row in copy.rows():
            out.append(row)
    check(len(out) == 1000 and out[999] == ("999", "note 999"), f"copy out: {out[-1:]}")

    # Server-side cursor (DECLARE/FETCH), in a transaction.
    with psycopg.connect(**PROXY) as tx:
        with tx.cursor(name="server_side") as cur:
            cur.itersize = 7
            cur.execute("SELECT g FROM generate_series(1, 100) g")
            check(sum(r[0] for r in cur) == 5050, "server-side cursor")
        tx.commit()

    # A server-side cursor over the masked column: every FETCH batch is masked.
    with psycopg.connect(**PROXY) as tx:
        with tx.cursor(name="masked_cursor") as cur:
            cur.itersize = 4
            cur.execute(
                f"SELECT g, c.email FROM generate_series(1, 25) g "
                f"CROSS JOIN {TABLE} c WHERE c.id = %s ORDER BY g",
                (1,),
            )
            emails = [email for _, email in cur]
        tx.commit()
    check(len(emails) == 25 and all(masked_email(e) for e in emails), f"cursor: {emails[:3]}")

    # executemany (pipelined by psycopg) and a COPY of the masked column out.
    conn.execute("CREATE TEMP TABLE many (id int, email text)")
    conn.cursor().executemany(
        "INSERT INTO many VALUES (%s, %s)", [(i, f"user{i}@example.org") for i in range(500)]
    )
    check(conn.execute("SELECT count(*) FROM many").fetchone()[0] == 500, "executemany")
    # (COPY of the table, or of a query's bare column: the masked column gets its strategy;
    # a value computed from it in COPY (query) is NULL, its type unknown there, as
    # docs/masking.md says.)
    with conn.cursor().copy(f"COPY {TABLE} (id, email) TO STDOUT") as copy:
        copied = dict(copy.rows())
    check(masked_email(copied["1"]), f"COPY of the table: {copied}")
    query = f"SELECT id, email, lower(email) FROM {TABLE} ORDER BY id"
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT") as copy:
        copied = list(copy.rows())
    check(copied[0][0] == "1" and masked_email(copied[0][1]), f"COPY (query): {copied[0]}")
    check(copied[0][2] is None, f"COPY (query), computed: {copied[0]}")

    # LISTEN / NOTIFY from another session.
    conn.execute("LISTEN matrix_channel")
    with psycopg.connect(**DIRECT, autocommit=True) as other:
        other.execute("NOTIFY matrix_channel, 'hello'")
    got = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
    check(got == ["hello"], f"notifications: {got}")

    # conn.cancel() of a long query: it ends with QueryCanceled, quickly. The cancel goes
    # once the server shows the sleep running (a cancel before that would have nothing to
    # cancel).
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def cancel_when_running():
        with psycopg.connect(**DIRECT, autocommit=True) as watcher:
            for _ in range(200):
                running = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
                    " AND query LIKE 'SELECT pg_sleep%%'",
                    (backend,),
                ).fetchone()[0]
                if running:
                    break
                time.sleep(0.05)
        conn.cancel()

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    started = time.monotonic()
    try:
        conn.execute("SELECT pg_sleep(20)")
        raise AssertionError("pg_sleep was not cancelled")
    except errors.QueryCanceled:
        check(time.monotonic() - started < 10, "the cancel took too long")
    finally:
        canceller.join()
    check(conn.execute("SELECT 1").fetchone() == (1,), "usable after a cancel")

print("ok")
