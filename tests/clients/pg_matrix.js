// node-postgres (pg) through pgwarden: driven by tests/client_matrix.rs (see
// matrix_common.py for the environment, which this program reads the same way). Every
// check throws on failure; the last line printed is "ok".
'use strict';

const fs = require('fs');
const { Client, Pool } = require('pg');
const Cursor = require('pg-cursor');

const env = process.env;
const TABLE = env.TABLE;
const HELD_ID = Number(env.HELD_ID);
const proxy = {
  host: env.PGW_HOST,
  port: Number(env.PGW_PORT),
  database: env.PGW_DATABASE,
  user: env.PGW_USER,
  password: env.PGW_PASSWORD,
  // Verified against the test CA; the certificate names 127.0.0.1.
  ssl: { ca: fs.readFileSync(env.PGW_CA), rejectUnauthorized: true },
};
const direct = {
  host: env.DIRECT_HOST,
  port: Number(env.DIRECT_PORT),
  database: env.PGW_DATABASE,
  user: env.DIRECT_USER,
  password: env.DIRECT_PASSWORD,
  ssl: false,
};

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function maskedEmail(value) {
  return typeof value === 'string' && value.endsWith('***@example.com') && value !== env.SECRET_EMAIL;
}

async function expectRefused(client, query, values) {
  try {
    await client.query(query, values);
  } catch (e) {
    check(e.code === '42501', `SQLSTATE ${e.code}: ${e.message}`);
    check(e.message.includes('pgwarden'), `pgwarden's message: ${e.message}`);
    return;
  }
  throw new Error(`${query} went through`);
}

function readCursor(cursor, size) {
  return new Promise((resolve, reject) => {
    cursor.read(size, (err, rows) => (err ? reject(err) : resolve(rows)));
  });
}

async function main() {
  const conn = new Client(proxy);
  await conn.connect();
  const other = new Client(direct);
  await other.connect();

  const who = await conn.query('SELECT current_user AS u');
  check(who.rows[0].u === 'app_rw', `upstream role ${who.rows[0].u}`);

  // Parameterized queries (extended protocol): the same rows as a direct connection.
  const query = {
    text: `SELECT id, name, $1::int + id AS plus, ARRAY[id, $1::int] AS arr FROM ${TABLE} WHERE id <= $2 ORDER BY id`,
    values: [10, 2],
    rowMode: 'array',
  };
  const viaProxy = await conn.query(query);
  const viaDirect = await other.query(query);
  check(JSON.stringify(viaProxy.rows) === JSON.stringify(viaDirect.rows),
    `${JSON.stringify(viaProxy.rows)} != ${JSON.stringify(viaDirect.rows)}`);
  check(viaProxy.fields.map((f) => f.name).join() === 'id,name,plus,arr', 'field names');

  // A named prepared statement, reused.
  for (let i = 0; i < 5; i++) {
    const r = await conn.query({ name: 'by-id', text: `SELECT name FROM ${TABLE} WHERE id = $1`, values: [2] });
    check(r.rows[0].name === 'John', 'named statement');
  }

  // A masked column arrives as an ordinary string.
  const masked = await conn.query(`SELECT email FROM ${TABLE} WHERE id = $1`, [1]);
  check(maskedEmail(masked.rows[0].email), `masked: ${masked.rows[0].email}`);

  // Binary results (node-postgres asks for them per query): the masked column as well.
  const binary = await conn.query({
    text: `SELECT id, email, $1::int8 AS big FROM ${TABLE} WHERE id = 1`,
    values: [7],
    binary: true,
  });
  check(binary.rows[0].id === 1 && String(binary.rows[0].big) === '7', `binary: ${JSON.stringify(binary.rows[0])}`);
  const binaryEmail = Buffer.isBuffer(binary.rows[0].email) ? binary.rows[0].email.toString() : binary.rows[0].email;
  check(maskedEmail(binaryEmail), `binary masked: ${binaryEmail}`);

  // An error inside a transaction aborts it, as PostgreSQL would; ROLLBACK recovers.
  await conn.query('BEGIN');
  await expectRefused(conn, `DROP TABLE ${TABLE}`);
  try {
    await conn.query('SELECT 1');
    throw new Error('the aborted transaction went on');
  } catch (e) {
    check(e.code === '25P02', `in failed transaction: ${e.code}`);
  }
  await conn.query('ROLLBACK');

  // Refusals are ordinary errors with pgwarden's message; the client stays usable.
  await expectRefused(conn, `DROP TABLE ${TABLE}`);
  await expectRefused(conn, 'SELECT pg_read_file($1)', ['/etc/hostname']);
  check((await conn.query('SELECT 1 AS one')).rows[0].one === 1, 'usable after refusals');

  // Errors from PostgreSQL itself pass through unchanged.
  try {
    await conn.query('SELECT * FROM no_such_table_here');
    throw new Error('no error');
  } catch (e) {
    check(e.code === '42P01', `undefined table: ${e.code}`);
  }

  // A held statement waits for the DBA, then completes.
  await conn.query(`INSERT INTO ${TABLE} VALUES ($1, 'held', 'held@example.org')`, [HELD_ID]);
  const held = await conn.query(`DELETE FROM ${TABLE} WHERE id = $1`, [HELD_ID]);
  check(held.rowCount === 1, `held DELETE: ${held.rowCount}`);

  // Row streaming with pg-cursor, in a transaction.
  await conn.query('BEGIN');
  const cursor = conn.query(new Cursor('SELECT g, $1::text AS s FROM generate_series(1, 100) g', ['x']));
  let total = 0;
  for (;;) {
    const rows = await readCursor(cursor, 7);
    if (rows.length === 0) break;
    for (const r of rows) total += r.g;
  }
  await new Promise((resolve) => cursor.close(resolve));
  await conn.query('COMMIT');
  check(total === 5050, `cursor total ${total}`);

  // A pool of clients, used concurrently.
  const pool = new Pool({ ...proxy, max: 4 });
  const doubled = await Promise.all(
    Array.from({ length: 16 }, (_, i) => pool.query('SELECT $1::int * 2 AS d', [i]).then((r) => r.rows[0].d)),
  );
  check(JSON.stringify(doubled) === JSON.stringify(Array.from({ length: 16 }, (_, i) => i * 2)), `pool: ${doubled}`);
  await pool.end();

  await conn.end();
  await other.end();
}

main().then(
  () => console.log('ok'),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
