"""asyncpg through pgwarden: driven by tests/client_matrix.rs (see matrix_common.py for the
environment). asyncpg speaks only the extended protocol, caches named prepared statements per
connection and asks for binary results. Every check raises on failure; the last line printed
is "ok".
"""

import asyncio
import datetime
import decimal
import io
import ssl
import time
import uuid

import asyncpg

from matrix_common import DIRECT, HELD_ID, PROXY, TABLE, check, masked_email


def tls_context():
    return ssl.create_default_context(cafile=PROXY["sslrootcert"])


async def connect(params, **extra):
    return await asyncpg.connect(
        host=params["host"],
        port=params["port"],
        database=params["dbname"],
        user=params["user"],
        password=params["password"],
        ssl=tls_context() if params is PROXY else False,
        **extra,
    )


# Binary codecs: each value goes in as a parameter and comes back as a result column.
TYPED = (
    "SELECT $1::int4 AS i, $2::int8 AS b, $3::numeric AS n, $4::timestamptz AS t, "
    "$5::uuid AS u, $6::jsonb AS j, $7::int4[] AS ia, $8::text[] AS ta, $9::bool AS f, "
    "$10::float8 AS d, $11::bytea AS y, $12::date AS dt"
)
TYPED_ARGS = (
    42,
    -(2**62),
    decimal.Decimal("12345.678901234567890"),
    datetime.datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=datetime.timezone.utc),
    uuid.UUID("2d1b7a56-8f5e-4c1e-9a3f-1b2c3d4e5f60"),
    '{"a": [1, 2, {"b": null}], "c": "d"}',
    [1, None, 3],
    ["x", "y z", None, "ü"],
    True,
    3.25,
    b"\x00\x01\xfe\xff",
    datetime.date(2026, 2, 28),
)


async def main():
    direct = await connect(DIRECT)
    conn = await connect(PROXY)
    check(conn.get_server_version() is not None, "server version")
    check(await conn.fetchval("SELECT current_user") == "app_rw", "upstream role")

    # Results equal those of a direct connection, including binary codecs both ways.
    typed_direct = await direct.fetchrow(TYPED, *TYPED_ARGS)
    typed_proxy = await conn.fetchrow(TYPED, *TYPED_ARGS)
    check(dict(typed_proxy) == dict(typed_direct), f"{dict(typed_proxy)} != {dict(typed_direct)}")
    check(typed_proxy["ia"] == [1, None, 3] and typed_proxy["n"] == TYPED_ARGS[2], "values")
    query = f"SELECT id, name FROM {TABLE} WHERE id <= $1 ORDER BY id"
    check(await conn.fetch(query, 2) == await direct.fetch(query, 2), "table rows")

    # The prepared-statement cache: the same text reuses one named server-side statement,
    # and an explicit prepared statement runs many times.
    for i in range(20):
        check(await conn.fetchval(f"SELECT name FROM {TABLE} WHERE id = $1", 1 + i % 2)
              in ("Jane", "John"), "cached statement")
    stmt = await conn.prepare(f"SELECT id, email FROM {TABLE} WHERE id = $1")
    for _ in range(5):
        row = await stmt.fetchrow(1)
        check(row["id"] == 1 and masked_email(row["email"]), f"masked via prepare: {row}")
    check(stmt.get_attributes()[1].name == "email", "statement description")

    # A masked column in a plain fetch (binary text format).
    email = await conn.fetchval(f"SELECT email FROM {TABLE} WHERE id = 1")
    check(masked_email(email), f"masked: {email}")

    # A refusal is asyncpg's own exception for 42501, with pgwarden's message; the
    # connection stays usable (simple and extended protocol).
    try:
        await conn.execute(f"DROP TABLE {TABLE}")
        raise AssertionError("DROP TABLE went through")
    except asyncpg.exceptions.InsufficientPrivilegeError as e:
        check("pgwarden" in str(e), f"pgwarden's message: {e}")
    try:
        await conn.fetchval("SELECT pg_read_file($1)", "/etc/hostname")
        raise AssertionError("pg_read_file went through")
    except asyncpg.exceptions.InsufficientPrivilegeError as e:
        check("pgwarden" in str(e), f"pgwarden's message: {e}")
    check(await conn.fetchval("SELECT 1") == 1, "usable after refusals")

    # A held statement waits for the DBA, then completes.
    await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, 'held', 'held@example.org')", HELD_ID)
    status = await conn.execute(f"DELETE FROM {TABLE} WHERE id = $1", HELD_ID)
    check(status == "DELETE 1", f"held DELETE: {status}")

    # copy_records_to_table (binary COPY FROM STDIN) and copy out.
    await conn.execute("CREATE TEMP TABLE copied (id int, note text, at timestamptz)")
    at = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    records = [(i, f"note {i}", at) for i in range(2000)]
    result = await conn.copy_records_to_table("copied", records=records)
    check(result == "COPY 2000", f"copy in: {result}")
    check(await conn.fetchval("SELECT sum(id) FROM copied") == sum(range(2000)), "copied rows")
    out = io.BytesIO()
    await conn.copy_from_query(
        "SELECT id, note FROM copied ORDER BY id LIMIT 3", output=out, format="csv"
    )
    check(out.getvalue() == b"0,note 0\n1,note 1\n2,note 2\n", f"copy out: {out.getvalue()}")

    # COPY of the masked table: text rows come out masked; binary, which pgwarden cannot
    # rewrite, is refused with asyncpg's normal error.
    out = io.BytesIO()
    await conn.copy_from_table(TABLE, columns=["id", "email"], output=out, format="csv")
    lines = out.getvalue().decode().splitlines()
    check(any(line.startswith("1,") and masked_email(line[2:]) for line in lines), "copy masked")
    try:
        await conn.copy_from_table(TABLE, output=io.BytesIO(), format="binary")
        raise AssertionError("binary COPY of a masked column went through")
    except asyncpg.exceptions.InsufficientPrivilegeError as e:
        check("pgwarden" in str(e), f"pgwarden's message: {e}")
    check(await conn.fetchval("SELECT 1") == 1, "usable after a refused COPY")

    # A cursor fetches a portal a few rows at a time (Execute with a row limit, the portal
    # suspended in between): every batch of the masked column comes out masked.
    query = (
        f"SELECT g, c.email FROM generate_series(1, 25) g "
        f"CROSS JOIN {TABLE} c WHERE c.id = 1 ORDER BY g"
    )
    async with conn.transaction():
        emails = [r["email"] async for r in conn.cursor(query, prefetch=4)]
    check(len(emails) == 25 and all(masked_email(e) for e in emails), f"cursor: {emails[:3]}")

    # executemany: many Bind/Execute in one pipeline.
    await conn.execute("CREATE TEMP TABLE many (id int, email text)")
    await conn.executemany(
        "INSERT INTO many VALUES ($1, $2)", [(i, f"user{i}@example.org") for i in range(500)]
    )
    check(await conn.fetchval("SELECT count(*) FROM many") == 500, "executemany")

    # A pool of connections, used concurrently.
    pool = await asyncpg.create_pool(
        host=PROXY["host"], port=PROXY["port"], database=PROXY["dbname"],
        user=PROXY["user"], password=PROXY["password"], ssl=tls_context(),
        min_size=2, max_size=4,
    )
    sums = await asyncio.gather(*(pool.fetchval("SELECT $1::int * 2", i) for i in range(16)))
    check(sums == [i * 2 for i in range(16)], f"pool: {sums}")
    await pool.close()

    # A timeout cancels the query on the server (asyncpg sends a CancelRequest).
    started = time.monotonic()
    try:
        await conn.fetchval("SELECT pg_sleep(20)", timeout=0.5)
        raise AssertionError("pg_sleep did not time out")
    except asyncio.TimeoutError:
        pass
    check(await conn.fetchval("SELECT 1") == 1, "usable after a timeout")
    check(time.monotonic() - started < 10, "the cancel took too long")

    # LISTEN / NOTIFY.
    got = asyncio.get_running_loop().create_future()
    await conn.add_listener("matrix_channel", lambda *args: got.set_result(args[3]))
    await direct.execute("NOTIFY matrix_channel, 'hello'")
    check(await asyncio.wait_for(got, 5) == "hello", "notification")

    await conn.close()
    await direct.close()


asyncio.run(main())
print("ok")
