//! Masking through real clients: every byte pgwarden sends a non-exempt identity is
//! checked for the seeded sensitive values (and their reverse, hex and base64), however the
//! query is written and whichever channel carries it; an exempt identity sees them.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::wire::bind_without_parameters as bind;
use common::{all_records, audit_dir, sqlstate, Proxy, ProxyOptions, ALICE_PASSWORD, BOB_PASSWORD};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The seeded values: distinctive random tokens in an email and a national ID.
struct Seed {
    table: String,
    email: String,
    ssn_token: String,
}

async fn seed(name: &str) -> Seed {
    let token = format!("tk{:016x}", rand::random::<u64>());
    let ssn_token = format!("sn{:016x}", rand::random::<u64>());
    let email = format!("{token}@example.com");
    let table = format!("mask_{name}");
    common::direct("app")
        .await
        .batch_execute(&format!(
            "DROP VIEW IF EXISTS {table}_view; DROP TABLE IF EXISTS {table}, {table}_copy;\n\
             CREATE TABLE {table} (id int PRIMARY KEY, name text, email text NOT NULL, ssn varchar(40), \
               profile jsonb, note text);\n\
             INSERT INTO {table} VALUES (1, 'Jane', '{email}', '{ssn_token}', \
               jsonb_build_object('mail', '{email}'), 'card 4242 4242 4242 4242, mail other.person@example.org'), \
               (2, 'John', 'john@example.net', '123-45-6789', '{{}}', 'nothing here');\n\
             CREATE VIEW {table}_view AS SELECT id, name, lower(email) AS contact FROM {table};\n\
             CREATE TABLE {table}_copy (v text);\n\
             ALTER TABLE {table} OWNER TO app_rw; ALTER VIEW {table}_view OWNER TO app_rw;\n\
             ALTER TABLE {table}_copy OWNER TO app_rw;\n\
             GRANT SELECT ON {table}, {table}_view TO app_ro;"
        ))
        .await
        .expect("seed");
    Seed {
        table,
        email,
        ssn_token,
    }
}

/// pgwarden masking a seeded table (alice masked, bob exempt).
async fn masking_proxy(seed: &Seed) -> Proxy {
    Proxy::start(ProxyOptions {
        extra: masking_config(seed, None),
        ..Default::default()
    })
    .await
}

/// A seeded table, pgwarden masking it, and a raw wire connection logged in as alice.
async fn wire_session(name: &str) -> (Seed, Proxy, TcpStream) {
    let seed = seed(name).await;
    let proxy = masking_proxy(&seed).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    common::wire::alice_login(&mut stream).await;
    (seed, proxy, stream)
}

/// Rules for `seed`: email and ssn masked for everyone but the `ops` group (bob).
fn masking_config(seed: &Seed, audit: Option<&std::path::Path>) -> String {
    let mut text = format!(
        "[masking]\nhash_key = \"0123456789abcdef0123\"\n\n\
         [[masking.rules]]\ntable = \"public.{t}\"\ncolumn = \"email\"\nstrategy = \"email\"\nexempt_groups = [\"ops\"]\n\n\
         [[masking.rules]]\ntable = \"{t}\"\ncolumn = \"ssn\"\nstrategy = \"redact\"\nexempt_groups = [\"ops\"]\n\n\
         [masking.detectors]\nexempt_groups = [\"ops\"]\n\n\
         [policy]\nguardrail_exempt_groups = [\"dev\"]\n\n",
        t = seed.table
    );
    if let Some(dir) = audit {
        text.push_str(&format!("[audit]\ndir = \"{}\"\n", dir.display()));
    }
    text
}

/// A TCP forwarder in front of pgwarden that records every byte sent to the client.
async fn tap(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut client_rd, mut client_wr) = client.into_split();
                let (mut server_rd, mut server_wr) = server.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
                    let _ = server_wr.shutdown().await;
                };
                let down = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        use tokio::io::AsyncReadExt;
                        let n = match server_rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if client_wr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_wr.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, seen)
}

async fn connect_via(addr: SocketAddr, user: &str, password: &str) -> tokio_postgres::Client {
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=app user={user} password={password} sslmode=disable",
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect through the tap");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The forms of a sensitive value that must never reach a non-exempt client.
fn forbidden_forms(value: &str) -> Vec<(String, Vec<u8>)> {
    let reversed: String = value.chars().rev().collect();
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    vec![
        ("raw".into(), value.as_bytes().to_vec()),
        ("reversed".into(), reversed.into_bytes()),
        ("hex".into(), hex.into_bytes()),
        // Without padding: it may be followed by more encoded bytes.
        (
            "base64".into(),
            b64.trim_end_matches('=').as_bytes()[..16].to_vec(),
        ),
    ]
}

fn assert_never_seen(seen: &[u8], secrets: &[&str], context: &str) {
    for secret in secrets {
        for (form, bytes) in forbidden_forms(secret) {
            if let Some(at) = seen
                .windows(bytes.len())
                .position(|w| w == bytes.as_slice())
            {
                let around = &seen[at.saturating_sub(300)..(at + 100).min(seen.len())];
                panic!(
                    "{context}: the {form} form of a masked value reached the client, in:\n{}",
                    String::from_utf8_lossy(around)
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_never_reach_a_developer_however_the_query_is_written() {
    let seed = seed("forms").await;
    let t = &seed.table;
    let proxy = masking_proxy(&seed).await;
    let (tap_addr, seen) = tap(proxy.addr).await;
    let alice = connect_via(tap_addr, "alice", ALICE_PASSWORD).await;
    let token = seed.email.split('@').next().unwrap().to_owned();

    // Each query runs in the simple protocol (text) and the extended one (binary results).
    let queries = [
        format!("SELECT email FROM {t}"),
        format!("SELECT email AS e, ssn AS s FROM {t}"),
        format!("SELECT c.email FROM {t} c"),
        format!("SELECT * FROM {t}"),
        format!("SELECT lower(email), email || 'x', substr(email, 1, 12), concat('a', email) FROM {t}"),
        format!("SELECT format('%s', email), email::bytea, md5(email), reverse(email) FROM {t}"),
        format!("SELECT encode(convert_to(email, 'UTF8'), 'hex'), encode(convert_to(email, 'UTF8'), 'base64') FROM {t}"),
        format!("SELECT c FROM {t} c"),
        format!("SELECT row_to_json(c), to_jsonb(c) FROM {t} c"),
        format!("SELECT json_agg(c) FROM {t} c"),
        format!("SELECT array_agg(email), string_agg(ssn, ',') FROM {t}"),
        format!("SELECT ROW(id, email), ARRAY[email] FROM {t}"),
        format!("SELECT (SELECT email FROM {t} WHERE id = 1)"),
        format!("WITH x AS (SELECT email AS e FROM {t}) SELECT upper(e) FROM x"),
        format!("SELECT s.v || '' FROM (SELECT email AS v FROM {t}) s"),
        format!("SELECT name FROM {t} UNION ALL SELECT email FROM {t}"),
        format!("SELECT * FROM {t}_view"),
        format!("SELECT upper(contact) FROM {t}_view"),
        format!("SELECT profile, profile->>'mail' FROM {t}"),
    ];
    for sql in &queries {
        let rows = alice
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(!rows.is_empty(), "{sql}");
        let rows = alice
            .query(sql.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{sql} (extended): {e}"));
        assert!(!rows.is_empty(), "{sql} (extended)");
    }
    // A prepared statement, executed twice (the second time without a fresh describe).
    let prepared = alice
        .prepare(&format!("SELECT email, id FROM {t} WHERE id = $1"))
        .await
        .unwrap();
    for _ in 0..2 {
        let row = alice.query_one(&prepared, &[&1i32]).await.unwrap();
        let email: String = row.get(0);
        assert_eq!(
            email,
            format!("{}***@example.com", &token[..1]),
            "email strategy"
        );
    }
    // COPY, text and CSV, of the table and of a query.
    for copy in [
        format!("COPY {t} TO STDOUT"),
        format!("COPY {t} TO STDOUT WITH (FORMAT csv, HEADER)"),
        format!("COPY {t} (email, id) TO STDOUT CSV"),
        format!("COPY (SELECT lower(email), id FROM {t}) TO STDOUT"),
        format!("COPY (SELECT * FROM {t}) TO STDOUT (FORMAT csv)"),
        format!("COPY (SELECT id, email, ssn FROM {t} c WHERE id > 0) TO STDOUT"),
        format!("COPY (SELECT c.email, c.name FROM {t} c) TO STDOUT (FORMAT csv)"),
        // `*` shifts positions: were the bare `id`s taken for columns 2–4, email and ssn
        // would pass as if they were ids.
        format!("COPY (SELECT *, id, id, id FROM {t}) TO STDOUT"),
        format!("COPY (SELECT id, * FROM {t}) TO STDOUT"),
        format!("COPY (SELECT (c).*, id, id, id FROM {t} c) TO STDOUT"),
        format!("COPY (SELECT email FROM (SELECT ssn AS email FROM {t}) s) TO STDOUT"),
        // No header line: the first line is data like the others.
        format!("COPY (SELECT string_agg(ssn || ':' || email, ';') FROM {t}) TO STDOUT (FORMAT csv, HEADER false)"),
        format!("COPY {t} TO STDOUT (FORMAT csv, HEADER 'off')"),
        // A quoted option value is a literal to the scanner: the second must not reuse the
        // first's analysis (and split tab-separated lines as CSV).
        format!("COPY {t} TO STDOUT (FORMAT 'csv')"),
        format!("COPY {t} TO STDOUT (FORMAT 'text')"),
    ] {
        use futures_util::StreamExt;
        let stream = alice
            .copy_out(copy.as_str())
            .await
            .unwrap_or_else(|e| panic!("{copy}: {e}"));
        let chunks: Vec<_> = stream.collect().await;
        assert!(!chunks.is_empty(), "{copy}");
        for chunk in chunks {
            chunk.unwrap_or_else(|e| panic!("{copy}: {e}"));
        }
    }
    // The rows a data-changing statement returns, copied out (and rolled back).
    {
        use futures_util::StreamExt;
        alice.batch_execute("BEGIN").await.unwrap();
        let copy = format!("COPY (DELETE FROM {t} WHERE id > 0 RETURNING email, ssn) TO STDOUT");
        let chunks: Vec<_> = alice
            .copy_out(copy.as_str())
            .await
            .unwrap_or_else(|e| panic!("{copy}: {e}"))
            .collect()
            .await;
        for chunk in chunks {
            chunk.unwrap_or_else(|e| panic!("{copy}: {e}"));
        }
        alice.batch_execute("ROLLBACK").await.unwrap();
    }
    // A bare column of a query over one table gets its rule's strategy, as in a SELECT.
    {
        use futures_util::StreamExt;
        let copied: Vec<u8> = alice
            .copy_out(format!("COPY (SELECT id, email FROM {t} WHERE id = 1) TO STDOUT").as_str())
            .await
            .unwrap()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flat_map(|chunk| chunk.unwrap().to_vec())
            .collect();
        assert_eq!(
            String::from_utf8(copied).unwrap(),
            format!("1\t{}***@example.com\n", &token[..1])
        );
    }
    // Binary COPY cannot be masked: refused.
    {
        use futures_util::StreamExt;
        let result: Result<Vec<_>, _> = match alice
            .copy_out(format!("COPY {t} TO STDOUT (FORMAT binary)").as_str())
            .await
        {
            Ok(stream) => stream.collect::<Vec<_>>().await.into_iter().collect(),
            Err(e) => Err(e),
        };
        let err = result.expect_err("binary COPY of masked columns is refused");
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    }
    // A cursor.
    alice
        .batch_execute(&format!(
            "BEGIN; DECLARE cur CURSOR FOR SELECT email, lower(email) FROM {t}; FETCH ALL FROM cur; CLOSE cur; COMMIT"
        ))
        .await
        .unwrap();
    // SQL-level PREPARE / EXECUTE.
    alice
        .batch_execute(&format!(
            "PREPARE by_id AS SELECT email, upper(email) FROM {t} WHERE id = $1"
        ))
        .await
        .unwrap();
    alice.batch_execute("EXECUTE by_id(1)").await.unwrap();
    // RETURNING.
    alice
        .simple_query(&format!(
            "UPDATE {t} SET name = name WHERE id = 1 RETURNING email, lower(email), ssn"
        ))
        .await
        .unwrap();
    // An error that echoes the value.
    let err = alice
        .simple_query(&format!("SELECT email::int FROM {t}"))
        .await
        .expect_err("not an integer");
    assert_eq!(sqlstate(&err).as_deref(), Some("22P02"));
    // An error whose DETAIL quotes the value in a shape of its own (an XML parser's input
    // line).
    let err = alice
        .simple_query(&format!("SELECT ('<' || ssn)::xml FROM {t} WHERE id = 1"))
        .await
        .expect_err("not XML");
    assert_eq!(sqlstate(&err).as_deref(), Some("2200N"), "{err}");
    // RAISE NOTICE in a DO block: the message is withheld.
    alice
        .batch_execute(&format!(
            "DO $$ BEGIN RAISE NOTICE 'found %', (SELECT email FROM {t} WHERE id = 1); END $$"
        ))
        .await
        .unwrap();
    // pg_notify of a masked value is a write derived from it: held for approval, and with
    // no [approvals] configured, refused.
    alice.batch_execute("LISTEN masked_channel").await.unwrap();
    let err = alice
        .simple_query(&format!(
            "SELECT pg_notify('masked_channel', email) FROM {t}"
        ))
        .await
        .expect_err("derived write");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    // A notification from another session carrying the value: the detectors mask it.
    common::direct("app")
        .await
        .batch_execute(&format!("NOTIFY masked_channel, 'contact {}'", seed.email))
        .await
        .unwrap();
    alice.simple_query("SELECT 1").await.unwrap();
    // The connection is still healthy after all of it.
    let n: i64 = alice
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "count(*) is not derived from a masked column");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let seen = seen.lock().unwrap().clone();
    assert_never_seen(&seen, &[&seed.email, &token, &seed.ssn_token], "alice");
    // Detectors: the unconfigured `note` column had a card number and an email.
    assert!(
        !seen.windows(19).any(|w| w == b"4242 4242 4242 4242"),
        "card number"
    );
    assert!(
        !seen.windows(25).any(|w| w == b"other.person@example.org"),
        "email in note"
    );
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("message withheld by pgwarden"),
        "RAISE NOTICE withheld"
    );
    assert!(text.contains("Jane"), "unmasked columns pass: {text:.400}");

    // bob (group ops) is exempt and sees the real values.
    let bob = proxy.connect("bob", BOB_PASSWORD).await;
    let row = bob
        .query_one(
            &format!("SELECT email, ssn, note FROM {t} WHERE id = 1"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), seed.email);
    assert_eq!(row.get::<_, String>(1), seed.ssn_token);
    assert!(row.get::<_, String>(2).contains("4242 4242 4242 4242"));
    proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_keep_their_types_and_the_audit_counts_them() {
    let seed = seed("types").await;
    let t = &seed.table;
    let dir = audit_dir("masking-types");
    let proxy = Proxy::start(ProxyOptions {
        extra: masking_config(&seed, Some(&dir)) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        ..Default::default()
    })
    .await;
    let alice = proxy.alice().await;
    // Binary results through tokio-postgres decode into their Rust types.
    let row = alice
        .query_one(
            &format!("SELECT email, ssn, profile, lower(email), id FROM {t} WHERE id = 1"),
            &[],
        )
        .await
        .unwrap();
    let email: String = row.get(0);
    assert!(email.ends_with("***@example.com"), "{email}");
    assert_eq!(row.get::<_, String>(1), "****");
    let profile: serde_json::Value = row.get(2);
    assert!(
        !profile.to_string().contains(&seed.email),
        "the detectors mask inside JSON"
    );
    assert_eq!(row.get::<_, String>(3), "****", "derived column");
    assert_eq!(row.get::<_, i32>(4), 1);
    // /metrics counts them, by rule and by detector.
    let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
    let (status, metrics) = common::http_get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pgwarden_masked_values_total{by=\"rule\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgwarden_masked_values_total{by=\"email\"} 1"),
        "{metrics}"
    );
    // A table no rule covers still goes through the detectors: in text COPY they mask, a
    // binary COPY they cannot read is refused rather than passed unscanned.
    alice
        .batch_execute(
            "CREATE TEMP TABLE notes (id int, body text); \
             INSERT INTO notes VALUES (1, 'call bob@example.com re card 4111111111111111')",
        )
        .await
        .unwrap();
    {
        use futures_util::StreamExt;
        let copy = |sql: String| {
            let alice = &alice;
            async move {
                let stream = alice.copy_out(sql.as_str()).await?;
                let chunks: Vec<_> = stream.collect().await;
                chunks
                    .into_iter()
                    .map(|c| c.map(|b| b.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|c| c.concat())
            }
        };
        let text = String::from_utf8(copy("COPY notes TO STDOUT".into()).await.unwrap()).unwrap();
        assert!(
            !text.contains("bob@example.com") && !text.contains("4111111111111111"),
            "{text}"
        );
        let err = copy("COPY notes TO STDOUT (FORMAT binary)".into())
            .await
            .expect_err("a binary COPY the detectors cannot scan");
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("cannot scan"), "{err:?}");
        // Columns the detectors skip (numbers of a table pgwarden knows) copy in binary.
        copy(format!("COPY {t} (id) TO STDOUT (FORMAT binary)"))
            .await
            .unwrap();
    }
    // Errors from parsing a statement hold only what the client sent: a driver (the
    // extended protocol) sees the name it got wrong, also on a table with masked columns.
    for (sql, expected) in [
        (
            format!("SELECT emial FROM {t}"),
            "column \"emial\" does not exist",
        ),
        (
            format!("SELECT id FROM {t} WHERE id = 'abc'::int"),
            "invalid input syntax for type integer: \"abc\"",
        ),
        (
            "SELECT * FROM no_such_table".to_owned(),
            "relation \"no_such_table\" does not exist",
        ),
    ] {
        let err = alice.prepare(&sql).await.expect_err(&sql);
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert_eq!(message, expected, "{sql}");
    }
    // A write derived from a masked column is refused (approve without [approvals]).
    let err = alice
        .execute(&format!("INSERT INTO {t}_copy SELECT email FROM {t}"), &[])
        .await
        .expect_err("derived write");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
    // Filtering on a masked column runs, and is flagged in the audit record.
    alice
        .query(&format!("SELECT id FROM {t} WHERE email LIKE 'tk%'"), &[])
        .await
        .unwrap();
    proxy.shutdown(Duration::from_secs(5)).await;

    let records = all_records(&dir);
    let result = records
        .iter()
        .find(|r| r["type"] == "statement.result" && r["masked"]["values"].as_u64() == Some(3))
        .unwrap_or_else(|| {
            panic!("a result with 3 masked values (email, ssn, lower(email)): {records:#?}")
        });
    let columns = result["masked"]["columns"].to_string();
    assert!(columns.contains(&format!("public.{t}.email")), "{columns}");
    assert!(columns.contains("(computed)"), "{columns}");
    assert!(result["masked"]["detected"]["email"].as_u64().is_some());
    assert!(records
        .iter()
        .any(|r| r["type"] == "statement" && r["masked_filters"] == serde_json::json!(["email"])));
    let log =
        std::fs::read_to_string(dir.read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
    assert!(!log.contains(&seed.email), "never a value in the audit log");
}

/// libpq-style extended protocol (Bind, Describe portal, Execute) and a client that never
/// describes (Bind, Execute): the rows are masked either way, and the client sees exactly
/// the RowDescriptions it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_and_without_a_describe_of_the_portal() {
    use common::wire::{error_fields, read_message};
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("wire").await;
    for describe in [true, false] {
        let mut out = bytes::BytesMut::new();
        let sql = format!("SELECT id, email FROM {} WHERE id = 1", seed.table);
        common::wire::parse_untyped("", &sql, &mut out);
        // Results in binary: id as int4, email as text bytes.
        frontend::bind(
            "",
            "",
            std::iter::empty::<i16>(),
            std::iter::empty::<Option<&[u8]>>(),
            |_: Option<&[u8]>, _: &mut bytes::BytesMut| -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> { unreachable!() },
            [1i16],
            &mut out,
        )
        .map_err(|_| "bind")
        .unwrap();
        if describe {
            frontend::describe(b'P', "", &mut out).unwrap();
        }
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
        stream.write_all(&out).await.unwrap();
        let mut descriptions = 0;
        let mut rows = Vec::new();
        loop {
            let (tag, body) = read_message(&mut stream).await;
            match tag {
                b'T' => descriptions += 1,
                b'D' => rows.push(body),
                b'E' => panic!("{:?}", error_fields(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        assert_eq!(descriptions, usize::from(describe), "describe = {describe}");
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        // 2 columns; id: length 4, value 1 (binary int4); then the masked email.
        assert_eq!(&row[..10], &[0, 2, 0, 0, 0, 4, 0, 0, 0, 1]);
        let email = String::from_utf8_lossy(&row[14..]);
        assert!(email.ends_with("***@example.com"), "{email}");
        assert_never_seen(row, &[&seed.email], "raw extended protocol");
    }
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// What pgwarden knows of a session's prepared statements must be what PostgreSQL has:
/// a second Parse of a name is refused (PostgreSQL keeps the first), and a Bind to a name
/// pgwarden does not know (a SQL-level PREPARE) is refused rather than run unjudged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_name_cannot_be_swapped_under_the_masking() {
    use common::wire::{error_fields, read_message};
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("swap").await;
    // Until ReadyForQuery: the messages' tags, the error codes, the DataRows.
    async fn exchange(
        stream: &mut TcpStream,
        out: bytes::BytesMut,
    ) -> (Vec<u8>, Vec<String>, Vec<Vec<u8>>) {
        stream.write_all(&out).await.unwrap();
        let (mut tags, mut codes, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let (tag, body) = read_message(stream).await;
            tags.push(tag);
            match tag {
                b'E' => codes.push(error_fields(&body)[&b'C'].clone()),
                b'D' => rows.push(body),
                b'Z' => return (tags, codes, rows),
                _ => {}
            }
        }
    }
    let bind_execute = |statement: &str, out: &mut bytes::BytesMut| {
        bind("", statement, out);
        frontend::execute("", 0, out).unwrap();
        frontend::sync(out);
    };
    let mut out = bytes::BytesMut::new();
    let sql = format!(
        "SELECT translate(email, '@.', '#,') FROM {} WHERE id = 1",
        seed.table
    );
    common::wire::parse_untyped("s", &sql, &mut out);
    frontend::sync(&mut out);
    let (_, codes, _) = exchange(&mut stream, out).await;
    assert!(codes.is_empty(), "{codes:?}");
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("s", "SELECT 'x'::text", &mut out);
    frontend::sync(&mut out);
    let (_, codes, _) = exchange(&mut stream, out).await;
    assert_eq!(codes, ["42P05"]);
    // "s" is still the translate(): masked as a value computed from email.
    let mut out = bytes::BytesMut::new();
    bind_execute("s", &mut out);
    let (_, codes, rows) = exchange(&mut stream, out).await;
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(rows.len(), 1);
    let local_part = seed.email.split('@').next().unwrap();
    assert!(
        !String::from_utf8_lossy(&rows[0]).contains(local_part),
        "a value derived from email came back in clear"
    );
    // A Parse the server rejects defines nothing: the name can be used again.
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("t", "SELECT * FROM no_such_table_here", &mut out);
    frontend::sync(&mut out);
    let (_, codes, _) = exchange(&mut stream, out).await;
    assert_eq!(codes, ["42P01"]);
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("t", &sql, &mut out);
    bind_execute("t", &mut out);
    let (_, codes, rows) = exchange(&mut stream, out).await;
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(rows.len(), 1);
    assert!(!String::from_utf8_lossy(&rows[0]).contains(local_part));
    // A DEALLOCATE that never ran (its message failed first) leaves "s" defined, on the
    // server and in pgwarden: a new "s" is refused, and "s" is still the translate().
    let mut out = bytes::BytesMut::new();
    frontend::query("SELECT 1/0; DEALLOCATE s", &mut out).unwrap();
    let (_, codes, _) = exchange(&mut stream, out).await;
    assert_eq!(codes, ["22012"]);
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("s", "SELECT 'x'::text", &mut out);
    bind_execute("s", &mut out);
    let (_, codes, rows) = exchange(&mut stream, out).await;
    assert_eq!(codes, ["42P05"]);
    assert!(rows.is_empty());
    let mut out = bytes::BytesMut::new();
    bind_execute("s", &mut out);
    let (_, codes, rows) = exchange(&mut stream, out).await;
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(rows.len(), 1);
    assert!(!String::from_utf8_lossy(&rows[0]).contains(local_part));
    // The same in SQL: a PREPARE the server rejects defines nothing, and a DEALLOCATE that
    // never ran (its message failed first) leaves the statement as it was.
    let translated = format!(
        "SELECT translate(email, '@.', '#,') FROM {} WHERE id = 1",
        seed.table
    );
    for (sql, code) in [
        (
            "PREPARE q AS SELECT 'x'::text FROM no_such_table_here".to_owned(),
            Some("42P01"),
        ),
        (format!("PREPARE q AS {translated}"), None),
        ("EXECUTE q".to_owned(), None),
        ("SELECT 1/0; DEALLOCATE q".to_owned(), Some("22012")),
        ("PREPARE q AS SELECT 'x'::text".to_owned(), Some("42P05")),
        ("EXECUTE q".to_owned(), None),
    ] {
        let mut out = bytes::BytesMut::new();
        frontend::query(&sql, &mut out).unwrap();
        let (_, codes, rows) = exchange(&mut stream, out).await;
        assert_eq!(codes, code.into_iter().collect::<Vec<_>>(), "{sql}");
        for row in rows {
            assert!(
                !String::from_utf8_lossy(&row).contains(local_part),
                "{sql}: a value derived from email came back in clear"
            );
        }
    }
    // A SQL-level PREPARE is not a protocol statement pgwarden knows: Bind to it is refused.
    let mut out = bytes::BytesMut::new();
    frontend::query(
        &format!(
            "PREPARE p AS SELECT translate(email, '@.', '#,') FROM {} WHERE id = 1",
            seed.table
        ),
        &mut out,
    )
    .unwrap();
    let (_, codes, _) = exchange(&mut stream, out).await;
    assert!(codes.is_empty(), "{codes:?}");
    let mut out = bytes::BytesMut::new();
    bind_execute("p", &mut out);
    let (_, codes, rows) = exchange(&mut stream, out).await;
    assert_eq!(codes, ["26000"]);
    assert!(rows.is_empty());
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// A Sync sent during a COPY FROM STDIN is ignored by the server, never answered: pgwarden's
/// picture of which reply belongs to which statement must not slip by one (the rows of a
/// masked query would then be planned with the facts of the statement before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_inside_copy_from_stdin_does_not_shift_which_reply_is_whose() {
    use common::wire::{error_fields, read_message};
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("copysync").await;
    let mut out = bytes::BytesMut::new();
    frontend::query("CREATE TEMP TABLE sink (a text)", &mut out).unwrap();
    frontend::query("COPY sink FROM STDIN", &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut ready = 0;
    loop {
        let (tag, body) = read_message(&mut stream).await;
        match tag {
            b'E' => panic!("{:?}", error_fields(&body)),
            b'Z' => ready += 1,
            b'G' => break,
            _ => {}
        }
    }
    assert_eq!(ready, 1);
    let mut out = bytes::BytesMut::new();
    frontend::sync(&mut out);
    // CopyData 'd' carrying one line.
    out.extend_from_slice(&[b'd', 0, 0, 0, 6, b'x', b'\n']);
    frontend::copy_done(&mut out);
    frontend::query("SELECT 'x' AS a", &mut out).unwrap();
    let sql = format!(
        "SELECT translate(email, '@.', '#,') AS a FROM {} WHERE id = 1",
        seed.table
    );
    frontend::query(&sql, &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut rows = Vec::new();
    let mut ready = 0;
    while ready < 3 {
        let (tag, body) = read_message(&mut stream).await;
        match tag {
            b'E' => panic!("{:?}", error_fields(&body)),
            b'D' => rows.push(body),
            b'Z' => ready += 1,
            _ => {}
        }
    }
    assert_eq!(rows.len(), 2);
    let local_part = seed.email.split('@').next().unwrap();
    assert!(
        !String::from_utf8_lossy(&rows[1]).contains(local_part),
        "a value derived from email came back in clear"
    );
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// Strict deployments: filtering on a masked column is refused, not just recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtering_on_a_masked_column_can_be_refused() {
    let seed = seed("filters").await;
    let t = &seed.table;
    let proxy = Proxy::start(ProxyOptions {
        extra: masking_config(&seed, None).replace(
            "[masking]\n",
            "[masking]\nmasked_filters = \"deny\"\nderived_writes = \"allow\"\n",
        ),
        ..Default::default()
    })
    .await;
    let alice = proxy.alice().await;
    for sql in [
        format!("SELECT id FROM {t} WHERE email LIKE 'tk%'"),
        format!("SELECT count(*) FROM {t} GROUP BY ssn"),
        format!("SELECT id FROM {t} ORDER BY email"),
        // The row count spells out a value as well as a WHERE would.
        format!("SELECT id FROM {t} LIMIT (SELECT ascii(email) FROM {t} WHERE id = 1)"),
        format!("SELECT DISTINCT ON (ssn) id FROM {t}"),
    ] {
        let err = alice.simple_query(&sql).await.expect_err(&sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}: {err}");
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("masking.masked_filters"), "{message}");
    }
    // Not a filter on a masked column: runs. And with derived_writes = "allow", a copy of
    // masked values is the operator's call.
    alice
        .simple_query(&format!("SELECT email FROM {t} WHERE id = 1"))
        .await
        .unwrap();
    alice
        .execute(&format!("INSERT INTO {t}_copy SELECT email FROM {t}"), &[])
        .await
        .unwrap();
    // The exempt identity is not restricted.
    let bob = proxy.connect("bob", BOB_PASSWORD).await;
    bob.simple_query(&format!("SELECT id FROM {t} WHERE email LIKE 'tk%'"))
        .await
        .unwrap();
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// A reload that adds a rule applies to the next statement of sessions already open, and
/// a table created after the session started is masked once it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_added_by_a_reload_and_tables_created_later_are_masked_in_open_sessions() {
    let seed = seed("reload").await;
    let t = &seed.table;
    let proxy = Proxy::start(ProxyOptions {
        extra: "[policy]\nguardrail_exempt_groups = [\"dev\"]\n".into(),
        ..Default::default()
    })
    .await;
    let alice = proxy.alice().await;
    let ssn = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap()
    };
    let query = format!("SELECT ssn FROM {t} WHERE id = 1");
    assert_eq!(
        ssn(alice.simple_query(&query).await.unwrap()),
        seed.ssn_token,
        "no rule yet"
    );

    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let later = format!("{t}_later");
    let rules = masking_config(&seed, None)
        .replace("[policy]\nguardrail_exempt_groups = [\"dev\"]\n\n", "")
        + &format!(
            "[[masking.rules]]\ntable = \"{later}\"\ncolumn = \"secret\"\nstrategy = \"redact\"\n"
        );
    std::fs::write(&proxy.config_path, format!("{text}\n{rules}")).unwrap();
    proxy
        .server
        .as_ref()
        .unwrap()
        .reload(&proxy.config_path)
        .await
        .unwrap();
    assert_eq!(
        ssn(alice.simple_query(&query).await.unwrap()),
        "****",
        "after the reload"
    );

    // A table the rule names, created in this session: masked from the next statement.
    alice
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {later}; CREATE TABLE {later} (secret text); INSERT INTO {later} VALUES ('{}')",
            seed.ssn_token
        ))
        .await
        .unwrap();
    assert_eq!(
        ssn(alice
            .simple_query(&format!("SELECT secret FROM {later}"))
            .await
            .unwrap()),
        "****",
        "the DDL reloaded the catalog"
    );
    proxy.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Shapes a review found leaking (each was fixed): names PostgreSQL makes up, whole rows of
// SELECT *, renamed columns, functions in FROM, shifted positions, error and notice texts, and
// names that protocol portals and statements share with SQL cursors and PREPARE. A value
// counts as leaked when its bytes cross the tap; emails are cut to their local part where the
// content detectors would otherwise mask them anyway.

/// Where `secret` appears in `seen`, with some bytes around it.
fn find(seen: &[u8], secret: &str) -> Option<String> {
    let at = seen
        .windows(secret.len())
        .position(|w| w == secret.as_bytes())?;
    let around = &seen[at.saturating_sub(120)..(at + 60).min(seen.len())];
    Some(String::from_utf8_lossy(around).into_owned())
}

/// Run each statement as alice (simple protocol, and extended if `extended`), then fail with
/// the statements after which a seeded token was seen on the wire. Alice is exempt from the
/// guardrails here (to try DDL and code freely); see [`run_candidates_with`].
async fn run_candidates(name: &str, statements: impl Fn(&str) -> Vec<String>, extended: bool) {
    run_candidates_with(name, |_| String::new(), false, statements, extended).await;
}

/// [`run_candidates_with`] with the default guardrails for alice.
async fn run_guarded(
    name: &str,
    setup: impl Fn(&str) -> String,
    statements: impl Fn(&str) -> Vec<String>,
    extended: bool,
) {
    run_candidates_with(name, setup, true, statements, extended).await;
}

/// [`run_candidates`], after `setup` (the table's name in, SQL out) runs as the superuser —
/// the owner's earlier work — and, when `guarded`, with the default guardrails for alice.
async fn run_candidates_with(
    name: &str,
    setup: impl Fn(&str) -> String,
    guarded: bool,
    statements: impl Fn(&str) -> Vec<String>,
    extended: bool,
) {
    let seed = seed(name).await;
    let setup = setup(&seed.table);
    if !setup.is_empty() {
        common::direct("app")
            .await
            .batch_execute(&setup)
            .await
            .expect("setup");
    }
    let mut config = masking_config(&seed, None);
    if guarded {
        config = config.replace("[policy]\nguardrail_exempt_groups = [\"dev\"]\n\n", "");
    }
    let proxy = Proxy::start(ProxyOptions {
        extra: config,
        ..Default::default()
    })
    .await;
    let (addr, seen) = tap(proxy.addr).await;
    let alice = connect_via(addr, "alice", ALICE_PASSWORD).await;
    let mut leaks = Vec::new();
    for sql in statements(&seed.table) {
        for ext in [false, true] {
            if ext && !extended {
                continue;
            }
            seen.lock().unwrap().clear();
            let result = if ext {
                alice
                    .query(sql.as_str(), &[])
                    .await
                    .map(|r| format!("{} rows", r.len()))
            } else {
                alice
                    .simple_query(&sql)
                    .await
                    .map(|r| format!("{} messages", r.len()))
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            let bytes = seen.lock().unwrap().clone();
            eprintln!(
                "[{name}] {} {sql}: {:?}",
                if ext { "ext" } else { "simple" },
                result.as_ref().map_err(|e| e.to_string())
            );
            let local_part = seed.email.split('@').next().unwrap_or_default();
            for secret in [seed.email.as_str(), local_part, seed.ssn_token.as_str()] {
                if let Some(around) = find(&bytes, secret) {
                    leaks.push(format!(
                        "{} `{sql}` leaked {secret}: ...{around:?}...",
                        if ext { "extended" } else { "simple" }
                    ));
                    break;
                }
            }
        }
    }
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(leaks.is_empty(), "LEAKS:\n{}", leaks.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_alias_column_list() {
    run_candidates(
        "aliascols",
        |t| {
            vec![
                format!("SELECT split_part(e, '@', 1), s || '' FROM {t} AS c(i, n, e, s)"),
                format!("SELECT upper(s) FROM {t} c(i, n, e, s) WHERE i = 1"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_column_names() {
    run_candidates(
        "implicit",
        |t| {
            vec![
                format!("SELECT \"coalesce\" FROM (SELECT coalesce(ssn, '') FROM {t}) s"),
                format!("WITH x AS (SELECT CASE WHEN true THEN ssn END FROM {t}) SELECT \"case\" FROM x"),
                format!("SELECT lower FROM (SELECT (SELECT lower(ssn)) FROM {t}) s"),
                format!("SELECT \"greatest\" FROM (SELECT greatest(ssn, '') FROM {t}) s"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_in_from() {
    run_candidates(
        "funcfrom",
        |t| {
            vec![
                format!("SELECT value FROM {t} c, jsonb_each_text(to_jsonb(c))"),
                format!("SELECT j.value FROM {t} c, jsonb_each_text(to_jsonb(c)) j"),
                format!("SELECT unnest FROM {t} c, unnest(ARRAY[c.ssn])"),
                format!("SELECT x.v FROM {t} c, XMLTABLE('/r' PASSING xmlelement(name r, c.ssn) COLUMNS v text PATH '.') x"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_row_of_star_subquery() {
    run_candidates(
        "starsub",
        |t| {
            vec![
                format!("SELECT s FROM (SELECT * FROM {t}) s"),
                format!("SELECT to_jsonb(s) FROM (SELECT * FROM {t}) s"),
                format!("WITH x AS (TABLE {t}) SELECT row_to_json(x) FROM x"),
                format!("SELECT s::text FROM (SELECT * FROM {t}) s"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_positions_shifted() {
    run_candidates(
        "shift",
        |t| {
            vec![format!(
                "SELECT (ROW()).*, ssn || '', (ROW(1, 2)).* FROM {t}"
            )]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_quote_in_value() {
    run_candidates(
        "quote",
        |t| vec![format!("SELECT ('\"' || ssn)::int FROM {t} WHERE id = 1")],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_renamed_bare_column() {
    use futures_util::StreamExt;
    let seed = seed("copyren").await;
    let t = &seed.table;
    let proxy = masking_proxy(&seed).await;
    let (addr, seen) = tap(proxy.addr).await;
    let alice = connect_via(addr, "alice", ALICE_PASSWORD).await;
    // (id, name, email, ssn, …) renamed: the column called `name` is ssn.
    let copy = format!("COPY (SELECT name FROM {t} AS c(id, ssn, email, name)) TO STDOUT");
    let data: Vec<u8> = alice
        .copy_out(copy.as_str())
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bytes = seen.lock().unwrap().clone();
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(
        find(&bytes, &seed.ssn_token).is_none(),
        "COPY leaked ssn: {:?}",
        String::from_utf8_lossy(&data)
    );
}

// ---- raw wire ----

async fn exchange(stream: &mut TcpStream, out: bytes::BytesMut) -> Vec<(u8, Vec<u8>)> {
    stream.write_all(&out).await.unwrap();
    let mut messages = Vec::new();
    loop {
        let (tag, body) = common::wire::read_message(stream).await;
        let done = tag == b'Z';
        messages.push((tag, body));
        if done {
            return messages;
        }
    }
}

fn query(sql: &str) -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
    out
}

/// `shown` (an exchange as [`show`] gives it) has rows, and none holds the seeded SSN.
fn assert_rows_masked(what: &str, shown: &str, seed: &Seed) {
    assert!(shown.contains("D:"), "{what}: no rows: {shown}");
    assert!(!shown.contains(&seed.ssn_token), "{what} leaked: {shown}");
}

/// The messages of an exchange as `tag:body` text, for assertions and failure output.
fn show(messages: &[(u8, Vec<u8>)]) -> String {
    messages
        .iter()
        .map(|(tag, body)| format!("{}:{}", *tag as char, String::from_utf8_lossy(body)))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A cursor name pgwarden remembers from a DECLARE whose transaction is over, reused by a
/// protocol-level portal of that name, then read with SQL FETCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_from_stale_cursor_name() {
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("stalecur").await;
    let t = &seed.table;
    exchange(
        &mut stream,
        query("BEGIN; DECLARE c CURSOR FOR SELECT 'harmless'::text; COMMIT"),
    )
    .await;
    exchange(&mut stream, query("BEGIN")).await;
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped(
        "",
        &format!("SELECT ssn || '' FROM {t} WHERE id = 1"),
        &mut out,
    );
    bind("c", "", &mut out);
    frontend::sync(&mut out);
    exchange(&mut stream, out).await;
    let m = exchange(&mut stream, query("FETCH ALL FROM c")).await;
    let text = show(&m);
    exchange(&mut stream, query("COMMIT")).await;
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(!text.contains(&seed.ssn_token), "FETCH leaked: {text}");
}

/// Control: the same without the earlier DECLARE (an unknown cursor: computed columns masked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_from_unknown_portal_control() {
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("unkcur").await;
    let t = &seed.table;
    exchange(&mut stream, query("BEGIN")).await;
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped(
        "",
        &format!("SELECT ssn || '' FROM {t} WHERE id = 1"),
        &mut out,
    );
    bind("c", "", &mut out);
    frontend::sync(&mut out);
    exchange(&mut stream, out).await;
    let m = exchange(&mut stream, query("FETCH ALL FROM c")).await;
    let text = show(&m);
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(!text.contains(&seed.ssn_token), "FETCH leaked: {text}");
}

/// A SQL-level PREPARE closed with a protocol Close, its name re-Parsed, then SQL EXECUTE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_after_protocol_close_of_sql_prepare() {
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("staleprep").await;
    let t = &seed.table;
    exchange(&mut stream, query("PREPARE p AS SELECT 'harmless'::text")).await;
    let mut out = bytes::BytesMut::new();
    frontend::close(b'S', "p", &mut out).unwrap();
    frontend::sync(&mut out);
    exchange(&mut stream, out).await;
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped(
        "p",
        &format!("SELECT ssn || '' FROM {t} WHERE id = 1"),
        &mut out,
    );
    frontend::sync(&mut out);
    exchange(&mut stream, out).await;
    let m = exchange(&mut stream, query("EXECUTE p")).await;
    let text = show(&m);
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(!text.contains(&seed.ssn_token), "EXECUTE leaked: {text}");
}

/// Writes derived from masked columns through `*`: are they held (derived_writes =
/// approve, no [approvals] => refused)? Then the copy is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_write_through_star() {
    run_candidates(
        "starwrite",
        |t| {
            vec![
                format!("CREATE TABLE {t}_c1 AS SELECT * FROM {t}"),
                format!("SELECT ssn, email FROM {t}_c1"),
                format!("CREATE TABLE {t}_c2 AS TABLE {t}"),
                format!("SELECT ssn, email FROM {t}_c2"),
                format!("CREATE TABLE {t}_c3 (LIKE {t})"),
                format!("INSERT INTO {t}_c3 SELECT * FROM {t}"),
                format!("SELECT ssn, email FROM {t}_c3"),
                format!("CREATE TABLE {t}_c4 (a text, b text, c text, d text, e text, f text)"),
                format!("INSERT INTO {t}_c4 VALUES ('1','2','3','4','5','6')"),
                format!("UPDATE {t}_c4 SET (a, b, c, d, e, f) = (SELECT * FROM {t} WHERE id = 1)"),
                format!("SELECT * FROM {t}_c4"),
            ]
        },
        false,
    )
    .await;
}

/// A function of the session's own, given the masked value as an argument, raises it in a
/// NOTICE or an ERROR message (unquoted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_raises_argument() {
    run_candidates(
        "raise",
        |t| {
            vec![
                format!("CREATE FUNCTION {t}_n(text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'v=%', $1; RETURN 'x'; END $$"),
                format!("CREATE FUNCTION {t}_e(text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'v=%', $1; END $$"),
                format!("SELECT {t}_n(ssn) FROM {t} WHERE id = 1"),
                format!("SELECT {t}_e(ssn) FROM {t} WHERE id = 1"),
            ]
        },
        false,
    )
    .await;
}

/// Column notation: `c.to_jsonb` is `to_jsonb(c)`, the whole row, when the relation has no
/// column of that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_notation_on_whole_rows() {
    run_candidates(
        "colnote",
        |t| {
            vec![
                format!("SELECT c.to_jsonb FROM {t} c"),
                format!("SELECT {t}.row_to_json FROM {t}"),
                format!("SELECT public.{t}.to_json FROM {t}"),
                format!("SELECT c.json_agg FROM {t} c"),
                format!("SELECT c.to_jsonb FROM {t}_view c"),
                format!("SELECT s.to_jsonb FROM (SELECT * FROM {t}) s"),
                format!("SELECT x.to_jsonb FROM (SELECT name, ssn FROM {t}) x"),
                format!("SELECT j.to_jsonb FROM ({t} a JOIN {t}_copy b ON true) j"),
                format!("WITH w AS (SELECT ssn FROM {t}) SELECT w.to_jsonb FROM w"),
                format!("SELECT (SELECT c.to_jsonb) FROM {t} c"),
            ]
        },
        true,
    )
    .await;
    // A qualified column that is a column stays what it is.
    let seed = seed("colnote2").await;
    let proxy = masking_proxy(&seed).await;
    let alice = connect_via(proxy.addr, "alice", ALICE_PASSWORD).await;
    let t = &seed.table;
    let row = alice
        .query_one(
            &format!(
                "SELECT c.name, s.n, v.name FROM {t} c, (SELECT name AS n FROM {t} WHERE id = 1) s, \
                 {t}_view v WHERE c.id = 1 AND v.id = 1"
            ),
            &[],
        )
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(row.get::<_, String>(i), "Jane", "column {i}");
    }
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// Unaliased columns read back by the name PostgreSQL gives them (FigureColname): the ELSE
/// of a CASE, a cast's type, SQL/XML functions, a field under subscripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_names_as_postgres_gives_them() {
    run_candidates(
        "figure",
        |t| {
            let case = format!("(SELECT CASE WHEN true THEN ssn ELSE note END FROM {t}) s");
            vec![
                format!("SELECT note FROM {case}"),
                format!("WITH w AS (SELECT CASE WHEN true THEN ssn ELSE note END FROM {t}) SELECT note FROM w"),
                format!("SELECT text FROM (SELECT (ssn || '')::text FROM {t}) s"),
                format!("SELECT xmlconcat::text FROM (SELECT xmlconcat(ssn::xml) FROM {t}) s"),
                format!("SELECT xmlforest::text FROM (SELECT xmlforest(ssn) FROM {t}) s"),
                format!("SELECT xmlserialize FROM (SELECT xmlserialize(content ssn::xml AS text) FROM {t}) s"),
                format!("SELECT profile FROM (SELECT (ROW(1, '', '', '', jsonb_build_array(ssn), '')::{t}).profile[0] FROM {t}) s"),
                format!("WITH u AS (UPDATE {t} SET note = note WHERE id = 1 RETURNING CASE WHEN true THEN ssn ELSE note END) SELECT note FROM u"),
                format!("BEGIN; DECLARE cur CURSOR FOR SELECT note FROM {case}; FETCH ALL cur; COMMIT"),
                format!("CREATE TEMP TABLE {t}_tmp AS SELECT note FROM {case}"),
                format!("SELECT * FROM {t}_tmp"),
                // `(row).*` in a subquery: columns named after the row type's fields.
                format!("SELECT note FROM (SELECT (ROW(1, '', '', '', '{{}}', ssn)::{t}).* FROM {t}) x"),
                format!("WITH w AS (SELECT (ROW(1, '', '', '', '{{}}', ssn)::{t}).* FROM {t}) SELECT note FROM w"),
                format!("SELECT note FROM (SELECT (json_populate_record(null::{t}, json_build_object('note', ssn))).* FROM {t}) x"),
            ]
        },
        true,
    )
    .await;
}

/// Values kept in server state a later statement reads without touching the masked table
/// (advisory lock keys in pg_locks, a sequence, a large object's OID) are derived writes:
/// refused here (derived_writes = "approve", no [approvals]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_kept_in_server_state_are_derived_writes() {
    let seed = seed("state").await;
    let t = &seed.table;
    let proxy = masking_proxy(&seed).await;
    let alice = connect_via(proxy.addr, "alice", ALICE_PASSWORD).await;
    alice
        .batch_execute(&format!("CREATE TEMP SEQUENCE {t}_seq"))
        .await
        .unwrap();
    let key = "('x' || encode(substr(ssn, 3, 8)::bytea, 'hex'))::bit(64)::bigint";
    for sql in [
        format!("SELECT pg_advisory_lock({key}) FROM {t} WHERE id = 1"),
        format!("SELECT pg_try_advisory_xact_lock_shared(ascii(email), 1) FROM {t} WHERE id = 1"),
        format!("SELECT setval('{t}_seq', {key}) FROM {t} WHERE id = 1"),
        format!("SELECT lo_create(ascii(ssn)) FROM {t} WHERE id = 1"),
    ] {
        let err = alice.simple_query(&sql).await.expect_err(&sql);
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}: {message}");
        assert!(
            message.contains("masking.derived_writes"),
            "{sql}: {message}"
        );
    }
    let locks: i64 = alice
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 0);
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// An error message that prints a number computed from a masked value (`transaction ID …
/// is in the future`) does not show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_in_errors_about_masked_values_are_scrubbed() {
    let seed = seed("errnum").await;
    let t = &seed.table;
    let key = "('x' || encode(substr(ssn, 3, 8)::bytea, 'hex'))::bit(64)::bigint";
    let secret: String = common::direct("app")
        .await
        .query_one(&format!("SELECT ({key})::text FROM {t} WHERE id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    let proxy = masking_proxy(&seed).await;
    let alice = connect_via(proxy.addr, "alice", ALICE_PASSWORD).await;
    for sql in [
        format!("SELECT txid_status({key}) FROM {t} WHERE id = 1"),
        format!("SELECT lo_get(({key} >> 32)::oid) FROM {t} WHERE id = 1"),
        format!("SELECT setseed(ascii(ssn)) FROM {t} WHERE id = 1"),
    ] {
        let err = alice.simple_query(&sql).await.expect_err(&sql);
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(!message.is_empty(), "{sql}: {err}");
        assert!(
            !message.chars().any(|c| c.is_ascii_digit()),
            "{sql}: a number reached the client: {message} (secret {secret})"
        );
    }
    // Errors of statements that read nothing masked keep their numbers.
    let err = alice.simple_query("SELECT setseed(7)").await.unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains('7'), "{message}");
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// Shapes that were masked all along (they must stay so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls() {
    run_candidates(
        "controls",
        |t| {
            vec![
                format!("SELECT v || '' FROM {t} c, LATERAL (SELECT c.ssn) x(v)"),
                format!("SELECT (c).ssn || '' FROM {t} c"),
                format!("SELECT upper(s.ssn) FROM (SELECT * FROM {t}) s"),
                format!("SELECT {t} FROM {t}"),
                format!("SELECT {t}::text FROM {t}"),
                format!("SELECT to_jsonb(v) FROM {t}_view v"),
                format!("SELECT format('%s', c.*) FROM {t} c"),
                format!("SELECT hstore_dummy FROM (SELECT 1 AS hstore_dummy) z, {t}"),
                format!("SELECT string_agg(ssn, ',') OVER () FROM {t}"),
                format!("SELECT jsonb_path_query(to_jsonb(c), '$.ssn') FROM {t} c"),
                format!("SELECT x FROM {t} c, LATERAL (SELECT c) x"),
                format!("VALUES ((SELECT ssn FROM {t} WHERE id = 1))"),
                format!("SELECT * FROM (VALUES ((SELECT ssn FROM {t} WHERE id = 1))) v"),
                format!("SELECT column1 || '' FROM (VALUES ((SELECT ssn FROM {t} WHERE id = 1))) v"),
                format!("WITH RECURSIVE r(v, n) AS (SELECT ssn, 1 FROM {t} UNION ALL SELECT v, n + 1 FROM r WHERE n < 2) SELECT v || '' FROM r"),
                format!("SELECT id FROM {t} UNION ALL SELECT 1"),
                format!("EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT ssn || '' FROM {t}"),
                format!("SELECT ssn::xml FROM {t} WHERE id = 1"),
                format!("SELECT ssn::regclass FROM {t} WHERE id = 1"),
                format!("SELECT current_setting(ssn) FROM {t} WHERE id = 1"),
                format!("INSERT INTO {t} (id, email) SELECT 1, 'x' ON CONFLICT (id) DO UPDATE SET name = {t}.name RETURNING ssn || ''"),
                format!("UPDATE {t} SET name = name WHERE id = 1 RETURNING {t}"),
                format!("SELECT unnest(ARRAY[ssn]) FROM {t}"),
                format!("SELECT * FROM {t} c, unnest(ARRAY[c.ssn]) u"),
                format!("SELECT u || '' FROM {t} c, unnest(ARRAY[c.ssn]) u"),
            ]
        },
        true,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// A second review round (alice under the default guardrails): statistics, CREATE TABLE … AS
// EXECUTE, values stored by DDL expressions, whole rows of join aliases, RETURNING aliases,
// unquoted values in reg* errors, a statement redefined between Bind and Execute, deep view
// chains; and the shapes that were masked all along.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_stats() {
    run_guarded(
        "stats",
        |_| String::new(),
        |t| {
            vec![
                format!("ANALYZE {t}"),
                format!("SELECT attname, histogram_bounds::text, most_common_vals::text FROM pg_stats WHERE tablename = '{t}'"),
                format!("SELECT * FROM pg_stats WHERE tablename = '{t}'"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctas_execute() {
    run_guarded(
        "ctas",
        |_| String::new(),
        |t| {
            vec![
                format!("PREPARE {t}_p AS SELECT id, ssn, email FROM {t}"),
                format!("CREATE TABLE {t}_x AS EXECUTE {t}_p"),
                format!("SELECT ssn, email FROM {t}_x"),
            ]
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_column() {
    run_guarded(
        "gen",
        |_| String::new(),
        |t| {
            vec![
                format!("ALTER TABLE {t} ADD COLUMN g text GENERATED ALWAYS AS (ssn || '') STORED"),
                format!("SELECT g FROM {t}"),
            ]
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_type_using() {
    run_guarded(
        "using",
        |_| String::new(),
        |t| {
            vec![
                format!("ALTER TABLE {t} ALTER COLUMN note TYPE varchar(200) USING (ssn || '')"),
                format!("SELECT note FROM {t}"),
            ]
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regoper_error() {
    run_guarded(
        "regoper",
        |_| String::new(),
        |t| {
            vec![
                format!("SELECT ssn::regoper FROM {t} WHERE id = 1"),
                format!("SELECT translate(email, '@.', '__')::regoper FROM {t} WHERE id = 1"),
                format!("SELECT (ssn || '(int4,int4)')::regoperator FROM {t} WHERE id = 1"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_alias_whole_row() {
    run_guarded(
        "joinalias",
        |_| String::new(),
        |t| {
            vec![
                format!("SELECT to_jsonb(j) FROM ({t} a JOIN {t} b USING (id)) AS j"),
                format!("SELECT j::text FROM ({t} a JOIN {t} b USING (id)) AS j"),
                format!("SELECT row_to_json(j.*) FROM ({t} a JOIN items b ON a.id = b.id) AS j"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_shapes() {
    run_guarded(
        "setops",
        |_| String::new(),
        |t| {
            vec![
                format!("SELECT name FROM {t} UNION ALL SELECT ssn FROM {t}"),
                format!("SELECT x FROM (SELECT name AS x FROM {t} UNION ALL SELECT ssn FROM {t}) s"),
                format!("WITH x AS (SELECT name FROM {t} UNION SELECT ssn FROM {t}) SELECT name FROM x"),
                format!("SELECT name FROM {t} EXCEPT SELECT ssn FROM {t} WHERE false"),
                format!("SELECT to_jsonb(c)->>'ssn' FROM {t} c"),
                format!("SELECT json_agg(c)::text FROM {t} c"),
                format!("SELECT array_agg(c)::text FROM {t} c"),
                format!("SELECT format('%s', ssn) FROM {t}"),
                format!("SELECT DISTINCT ON (id) ssn || '' FROM {t}"),
                format!("SELECT first_value(ssn) OVER (ORDER BY id) FROM {t}"),
                format!("SELECT ssn FROM {t} GROUP BY GROUPING SETS ((ssn), ())"),
                format!("SELECT l.x FROM {t} c, LATERAL (SELECT c.ssn AS x) l"),
                format!("UPDATE {t} SET name = name WHERE id = 1 RETURNING ssn, (SELECT s FROM (SELECT ssn) z(s))"),
                format!("SELECT generate_series(1, 2), ssn || '' FROM {t}"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_owner_views() {
    run_guarded(
        "views",
        |t| {
            format!(
                "CREATE VIEW {t}_sb WITH (security_barrier) AS SELECT id, ssn AS a, email AS b FROM {t};\n\
                 CREATE VIEW {t}_ren (x, y) AS SELECT id, ssn FROM {t};\n\
                 CREATE MATERIALIZED VIEW {t}_mv AS SELECT id, ssn || '' AS s FROM {t};\n\
                 CREATE VIEW {t}_un AS SELECT id, name AS n FROM {t} UNION ALL SELECT id, ssn FROM {t};\n\
                 GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_rw, app_ro;"
            )
        },
        |t| {
            vec![
                format!("SELECT a, b, a || '' FROM {t}_sb"),
                format!("SELECT y, y || '' FROM {t}_ren"),
                format!("SELECT s FROM {t}_mv"),
                format!("SELECT n FROM {t}_un"),
            ]
        },
        true,
    )
    .await;
}

/// A chain of views made by the owner earlier: past MAX_VIEW_ROUNDS (8) levels the catalog
/// stops resolving, and the deeper views are not known at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_view_chain() {
    run_guarded(
        "chain",
        |t| {
            let mut s = format!("CREATE VIEW {t}_c1 AS SELECT id, ssn AS s FROM {t};\n");
            for i in 2..=9 {
                s.push_str(&format!(
                    "CREATE VIEW {t}_c{i} AS SELECT id, s FROM {t}_c{};\n",
                    i - 1
                ));
            }
            s.push_str("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_rw, app_ro;");
            s
        },
        |t| {
            vec![
                format!("SELECT s FROM {t}_c8"),
                format!("SELECT s FROM {t}_c9"),
            ]
        },
        true,
    )
    .await;
}

/// A DML statement's RETURNING alias, read through its CTE (or COPY of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_alias_in_cte() {
    run_guarded(
        "retalias",
        |_| String::new(),
        |t| {
            vec![
                format!("WITH u AS (UPDATE {t} SET name = name WHERE id = 1 RETURNING ssn AS q) SELECT q || '' FROM u"),
                format!("COPY (WITH u AS (UPDATE {t} SET name = name WHERE id = 1 RETURNING ssn AS q) SELECT q FROM u) TO STDOUT"),
            ]
        },
        true,
    )
    .await;
}

/// Bind a portal to a statement that reads a masked column, then redefine the statement
/// (re-Parse of the unnamed one; Close + Parse of a named one) before Execute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reparse_between_bind_and_execute() {
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("reparse").await;
    let t = &seed.table;
    let secret_sql = format!("SELECT ssn || '' FROM {t} WHERE id = 1");
    // Unnamed statement re-parsed.
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("", &secret_sql, &mut out);
    bind("", "", &mut out);
    common::wire::parse_untyped("", "SELECT 'harmless'::text", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    let unnamed = show(&exchange(&mut stream, out).await);
    eprintln!("unnamed: {unnamed}");
    // Named statement closed and parsed again.
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("s1", &secret_sql, &mut out);
    bind("p1", "s1", &mut out);
    frontend::close(b'S', "s1", &mut out).unwrap();
    common::wire::parse_untyped("s1", "SELECT 'harmless'::text", &mut out);
    frontend::execute("p1", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    let named = show(&exchange(&mut stream, out).await);
    eprintln!("named: {named}");
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(
        !unnamed.contains(&seed.ssn_token),
        "unnamed re-Parse leaked: {unnamed}"
    );
    assert!(
        !named.contains(&seed.ssn_token),
        "named Close/Parse leaked: {named}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_misc() {
    run_guarded(
        "misc",
        |_| String::new(),
        |t| {
            vec![
                format!("COPY (SELECT name FROM {t} UNION ALL SELECT ssn FROM {t}) TO STDOUT"),
                format!("COPY (SELECT * FROM {t}_view) TO STDOUT (FORMAT csv)"),
                format!("COPY (SELECT ssn AS name FROM {t}) TO STDOUT (FORMAT csv, HEADER)"),
                format!("BEGIN"),
                format!("DECLARE {t}_h CURSOR WITH HOLD FOR SELECT ssn || '' AS v, c FROM {t} c"),
                format!("COMMIT"),
                format!("FETCH ALL FROM {t}_h"),
                format!("CLOSE {t}_h"),
                format!("SELECT (c)::text::int FROM {t} c WHERE id = 1"),
                format!("SELECT ('{{' || ssn)::int[] FROM {t} WHERE id = 1"),
                format!("ALTER TABLE {t} ADD CONSTRAINT {t}_ex EXCLUDE (note WITH =)"),
                format!("UPDATE {t} SET note = 'x' WHERE id = 2"),
                format!("SELECT (SELECT v FROM (SELECT c FROM {t} c) AS w(v) LIMIT 1)::text"),
                format!("SELECT x FROM {t} c CROSS JOIN LATERAL (VALUES (c.ssn)) v(x)"),
                format!("SELECT to_jsonb(u) FROM (SELECT 1) s, LATERAL (SELECT * FROM {t}) u"),
                format!("SELECT ssn::regclass FROM {t} WHERE id = 1"),
                format!("EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT * FROM {t} WHERE ssn = (SELECT ssn FROM {t} WHERE id = 1)"),
            ]
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_hold_cursor() {
    run_guarded(
        "hold",
        |_| String::new(),
        |t| {
            vec![
                format!("BEGIN"),
                format!("DECLARE {t}_h CURSOR WITH HOLD FOR SELECT ssn || '' AS v, c FROM {t} c"),
                format!("COMMIT"),
                format!("FETCH 1 FROM {t}_h"),
                format!("BEGIN"),
                format!("FETCH ALL FROM {t}_h"),
                format!("COMMIT"),
                format!("CLOSE {t}_h"),
            ]
        },
        false,
    )
    .await;
}

/// Read until `count` ReadyForQuery messages have come; everything read, as text.
async fn until_ready(stream: &mut TcpStream, count: usize) -> String {
    let mut messages = Vec::new();
    let mut ready = 0;
    while ready < count {
        let message = common::wire::read_message(stream).await;
        ready += usize::from(message.0 == b'Z');
        messages.push(message);
    }
    show(&messages)
}

/// An error that stops a message puts back only the names that message changed: a name
/// closed and parsed again by messages sent right behind it keeps its new statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_does_not_undo_what_later_messages_defined() {
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("undo").await;
    let t = &seed.table;
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("s1", &format!("SELECT id FROM {t}"), &mut out);
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    until_ready(&mut stream, 1).await;
    // One write: a Query whose PREPARE fails (it would have defined a name), then Close and
    // a new Parse of s1, then Sync.
    let mut out = query("PREPARE doomed AS SELECT * FROM no_such_table_here");
    frontend::close(b'S', "s1", &mut out).unwrap();
    common::wire::parse_untyped(
        "s1",
        &format!("SELECT upper(ssn) FROM {t} WHERE id = 1"),
        &mut out,
    );
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    until_ready(&mut stream, 2).await;
    let mut out = bytes::BytesMut::new();
    bind("", "s1", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let text = until_ready(&mut stream, 1).await;
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(
        !text.to_lowercase().contains(&seed.ssn_token.to_lowercase()),
        "the new s1 was masked by the old one's lineage: {text}"
    );
}

/// After an extended-protocol message fails, PostgreSQL discards everything up to the next
/// Sync, simple Queries included. pgwarden must expect no answer for what the client sends
/// meanwhile, or it credits every later answer to the statement before it (and masks it by
/// that statement's columns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_server_skips_after_an_error_are_not_expected_to_answer() {
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("skipped").await;
    let t = &seed.table;
    let failing_parse = || {
        let mut out = bytes::BytesMut::new();
        common::wire::parse_untyped("", "SELECT * FROM no_such_table_here", &mut out);
        frontend::flush(&mut out);
        out
    };
    // A failing Parse and a Flush: the error comes, the server now skips until Sync.
    stream.write_all(&failing_parse()).await.unwrap();
    assert_eq!(common::wire::read_message(&mut stream).await.0, b'E');
    // Skipped: the Query. Answered: the Sync.
    let mut out = query("SELECT 1");
    frontend::sync(&mut out);
    let answer = exchange(&mut stream, out).await;
    assert_eq!(show(&answer), "Z:I");
    // The same with a Bind and an Execute (they were once the end of the session).
    stream.write_all(&failing_parse()).await.unwrap();
    assert_eq!(common::wire::read_message(&mut stream).await.0, b'E');
    let mut out = bytes::BytesMut::new();
    bind("", "", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    assert_eq!(show(&exchange(&mut stream, out).await), "Z:I");
    // Every answer still goes with its own statement.
    exchange(
        &mut stream,
        query("SELECT 'x'::text FROM no_such_table_here"),
    )
    .await;
    let answer = show(
        &exchange(
            &mut stream,
            query(&format!("SELECT ssn || '' FROM {t} WHERE id = 1")),
        )
        .await,
    );
    let constant = show(&exchange(&mut stream, query("SELECT 'harmless text'")).await);
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(!answer.contains(&seed.ssn_token), "leaked: {answer}");
    assert!(constant.contains("harmless text"), "{constant}");
}

/// A Bind the server refuses (the portal name is taken) leaves the portal as it was; so does
/// ROLLBACK TO SAVEPOINT after it. An Execute of it is masked by what it really runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bind_does_not_rebind_the_portal() {
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("rebind").await;
    let t = &seed.table;
    exchange(&mut stream, query("BEGIN")).await;
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped(
        "real",
        &format!("SELECT ssn || '' FROM {t} WHERE id = 1"),
        &mut out,
    );
    bind("pp", "real", &mut out);
    frontend::sync(&mut out);
    exchange(&mut stream, out).await;
    exchange(&mut stream, query("SAVEPOINT sp")).await;
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("decoy", "SELECT 'harmless'::text", &mut out);
    bind("pp", "decoy", &mut out);
    frontend::sync(&mut out);
    let refused = show(&exchange(&mut stream, out).await);
    assert!(refused.contains("42P03"), "{refused}");
    exchange(&mut stream, query("ROLLBACK TO SAVEPOINT sp")).await;
    let mut out = bytes::BytesMut::new();
    frontend::execute("pp", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    let rows = show(&exchange(&mut stream, out).await);
    exchange(&mut stream, query("ROLLBACK")).await;
    proxy.shutdown(Duration::from_secs(5)).await;
    assert_rows_masked("rows", &rows, &seed);
}

/// A Query queued behind a pipeline that fails is skipped by the server; pgwarden must not
/// wait for its answer forever, or the session never looks idle again and a reload's new
/// masking rules never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_query_leaves_the_session_idle_for_a_reload() {
    use postgres_protocol::message::frontend;
    let seed = seed("skipidle").await;
    let t = &seed.table;
    let proxy = Proxy::start(ProxyOptions {
        extra: "[policy]\nguardrail_exempt_groups = [\"dev\"]\n".into(),
        ..Default::default()
    })
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    common::wire::alice_login(&mut stream).await;
    let mut out = bytes::BytesMut::new();
    common::wire::parse_untyped("", "SELECT * FROM no_such_table_here", &mut out);
    out.extend_from_slice(&query("SELECT 1"));
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    until_ready(&mut stream, 1).await;
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let rules = masking_config(&seed, None)
        .replace("[policy]\nguardrail_exempt_groups = [\"dev\"]\n\n", "");
    std::fs::write(&proxy.config_path, format!("{text}\n{rules}")).unwrap();
    proxy
        .server
        .as_ref()
        .unwrap()
        .reload(&proxy.config_path)
        .await
        .unwrap();
    let rows = show(
        &exchange(
            &mut stream,
            query(&format!("SELECT ssn FROM {t} WHERE id = 1")),
        )
        .await,
    );
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(rows.contains("****"), "{rows}");
    assert!(!rows.contains(&seed.ssn_token), "leaked: {rows}");
}

/// Renaming a masked column, moving its table to another schema or making it a partition
/// would take its values out of the rules: by someone the rules mask, such a change is
/// refused here (masking.schema_changes = "approve", no [approvals]); an exempt identity
/// may make it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_to_a_masked_table_are_not_for_masked_identities() {
    let seed = seed("schemachange").await;
    let t = &seed.table;
    let proxy = masking_proxy(&seed).await;
    let alice = proxy.alice().await;
    for sql in [
        format!("ALTER TABLE {t} RENAME COLUMN ssn TO s"),
        format!("ALTER TABLE {t} RENAME TO {t}_moved"),
        format!("ALTER TABLE {t} SET SCHEMA pg_temp"),
        format!("ALTER TABLE {t} ALTER COLUMN ssn TYPE text"),
    ] {
        let err = alice.simple_query(&sql).await.unwrap_err();
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(
            message.contains("masking.schema_changes"),
            "{sql}: {message}"
        );
    }
    let row = alice
        .simple_query(&format!("SELECT ssn FROM {t} WHERE id = 1"))
        .await
        .unwrap();
    assert!(format!("{row:?}").contains("****"), "{row:?}");
    let columns: i64 = common::direct("app")
        .await
        .query_one(
            &format!("SELECT count(*) FROM information_schema.columns WHERE table_name = '{t}' AND column_name = 'ssn'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 1, "the column kept its name");
    // Other DDL on the table, and anything by an exempt identity, is not held.
    alice
        .simple_query(&format!("CREATE INDEX ON {t} (id)"))
        .await
        .unwrap();
    // (bob's role does not own the table: the server, not pgwarden, refuses him.)
    let bob = proxy.connect("bob", BOB_PASSWORD).await;
    let err = bob
        .simple_query(&format!("ALTER TABLE {t} RENAME COLUMN ssn TO s"))
        .await
        .unwrap_err();
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("must be owner"), "{message}");
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// Results are masked by what ran, not by what later statements of the same message, or
/// messages sent right behind it, made of the cursor or prepared name: FETCH, then CLOSE and
/// DECLARE again; EXECUTE, then DEALLOCATE and PREPARE again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_redefined_right_after_its_use_does_not_unmask_what_it_returned() {
    let (seed, proxy, mut stream) = wire_session("lookahead").await;
    let t = &seed.table;
    let secret = format!("SELECT ssn || '' AS v FROM {t} WHERE id = 1");
    let harmless = "SELECT 'x'::text AS v";
    exchange(&mut stream, query("BEGIN")).await;
    exchange(
        &mut stream,
        query(&format!("DECLARE c CURSOR FOR {secret}")),
    )
    .await;
    let fetched = show(
        &exchange(
            &mut stream,
            query(&format!(
                "FETCH 1 FROM c; CLOSE c; DECLARE c CURSOR FOR {harmless}"
            )),
        )
        .await,
    );
    exchange(
        &mut stream,
        query(&format!("DECLARE c2 CURSOR FOR {secret}")),
    )
    .await;
    let mut out = query("FETCH 1 FROM c2");
    out.extend_from_slice(&query(&format!(
        "CLOSE c2; DECLARE c2 CURSOR FOR {harmless}"
    )));
    stream.write_all(&out).await.unwrap();
    let pipelined = until_ready(&mut stream, 2).await;
    exchange(&mut stream, query("COMMIT")).await;
    exchange(&mut stream, query(&format!("PREPARE q AS {secret}"))).await;
    let executed = show(
        &exchange(
            &mut stream,
            query(&format!("EXECUTE q; DEALLOCATE q; PREPARE q AS {harmless}")),
        )
        .await,
    );
    proxy.shutdown(Duration::from_secs(5)).await;
    for (what, text) in [
        ("FETCH", &fetched),
        ("pipelined FETCH", &pipelined),
        ("EXECUTE", &executed),
    ] {
        assert_rows_masked(what, text, &seed);
    }
}

/// In one write: the unnamed statement parsed as the secret query and synced; then a
/// segment whose Execute fails, so the server skips the Parse of a harmless unnamed
/// statement behind it; then Bind and Execute of the unnamed statement. The server runs the
/// secret one; pgwarden must not mask it as the harmless one. Likewise for a Bind of a
/// portal that the server skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_or_bind_the_server_skipped_does_not_decide_how_later_results_are_masked() {
    use common::wire::parse_untyped as parse;
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("skipparse").await;
    let t = &seed.table;
    let secret = format!("SELECT ssn || '' AS v FROM {t} WHERE id = 1");
    let failing = |out: &mut bytes::BytesMut| {
        parse("z", "SELECT 1/0", out);
        bind("zz", "z", out);
        frontend::execute("zz", 0, out).unwrap();
    };
    let mut out = bytes::BytesMut::new();
    parse("", &secret, &mut out);
    frontend::sync(&mut out);
    failing(&mut out);
    parse("", "SELECT 'x'::text AS v", &mut out);
    frontend::sync(&mut out);
    bind("", "", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let statement = until_ready(&mut stream, 3).await;
    // A named portal: bound to the secret query in a transaction, then a Bind of it to a
    // harmless one skipped after an error, a savepoint rolled back, and an Execute — all in
    // one write.
    exchange(&mut stream, query("BEGIN")).await;
    let mut out = bytes::BytesMut::new();
    parse("real", &secret, &mut out);
    bind("pp", "real", &mut out);
    frontend::sync(&mut out);
    out.extend_from_slice(&query("SAVEPOINT sp"));
    parse("decoy", "SELECT 'x'::text AS v", &mut out);
    failing(&mut out);
    bind("pp", "decoy", &mut out);
    frontend::sync(&mut out);
    out.extend_from_slice(&query("ROLLBACK TO SAVEPOINT sp"));
    frontend::execute("pp", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let portal = until_ready(&mut stream, 5).await;
    exchange(&mut stream, query("ROLLBACK")).await;
    proxy.shutdown(Duration::from_secs(5)).await;
    for (what, text) in [("unnamed statement", &statement), ("portal", &portal)] {
        assert_rows_masked(what, text, &seed);
    }
}

/// Two COPY FROM STDIN in one write, the second naming a table that does not exist: the
/// first COPY's start ignores only its own Syncs, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelined_copies_keep_their_own_syncs() {
    use common::wire::parse_untyped as parse;
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("twocopies").await;
    let t = &seed.table;
    let copy_in = |table: &str, out: &mut bytes::BytesMut| {
        parse("", &format!("COPY {table} (v) FROM STDIN"), out);
        bind("", "", out);
        frontend::execute("", 0, out).unwrap();
        frontend::sync(out);
        frontend::CopyData::new(&b"row\n"[..]).unwrap().write(out);
        frontend::copy_done(out);
        frontend::sync(out);
    };
    let mut out = bytes::BytesMut::new();
    copy_in(&format!("{t}_copy"), &mut out);
    copy_in("no_such_table_here", &mut out);
    stream.write_all(&out).await.unwrap();
    // The first COPY's; the second's error (its data and CopyDone are then dropped by the
    // server); the last Sync's.
    let answers = until_ready(&mut stream, 3).await;
    assert!(answers.contains("42P01"), "{answers}");
    let after = show(&exchange(&mut stream, query("SELECT 'still here'")).await);
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(after.contains("still here"), "{after}");
}

/// A protocol portal's record does not outlive the server's portal: after SQL CLOSE of it,
/// a cursor DECLAREd under the same name and run with a protocol Execute is masked by
/// what the cursor reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_replacing_a_closed_portal_is_masked_as_the_cursor() {
    use common::wire::parse_untyped as parse;
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("portalcursor").await;
    let t = &seed.table;
    exchange(&mut stream, query("BEGIN")).await;
    let mut out = bytes::BytesMut::new();
    parse("h", "SELECT 'x'::text AS v", &mut out);
    bind("p", "h", &mut out);
    frontend::sync(&mut out);
    exchange(&mut stream, out).await;
    exchange(
        &mut stream,
        query(&format!(
            "CLOSE p; DECLARE p CURSOR FOR SELECT ssn || '' AS v FROM {t} WHERE id = 1"
        )),
    )
    .await;
    let mut out = bytes::BytesMut::new();
    frontend::execute("p", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    let rows = show(&exchange(&mut stream, out).await);
    exchange(&mut stream, query("ROLLBACK")).await;
    proxy.shutdown(Duration::from_secs(5)).await;
    assert_rows_masked("rows", &rows, &seed);
}

/// A Close of a prepared statement that the server skips (an earlier message of its Sync
/// segment failed) leaves the statement usable, as it is on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_the_server_skipped_leaves_the_statement() {
    use common::wire::parse_untyped as parse;
    use postgres_protocol::message::frontend;
    let (_seed, proxy, mut stream) = wire_session("skipclose").await;
    let mut out = bytes::BytesMut::new();
    parse("kept", "SELECT 'kept'::text AS v", &mut out);
    frontend::sync(&mut out);
    exchange(&mut stream, out).await;
    let mut out = bytes::BytesMut::new();
    parse("z", "SELECT 1/0", &mut out);
    bind("zz", "z", &mut out);
    frontend::execute("zz", 0, &mut out).unwrap();
    frontend::close(b'S', "kept", &mut out).unwrap();
    frontend::sync(&mut out);
    let failed = show(&exchange(&mut stream, out).await);
    assert!(failed.contains("22012"), "{failed}");
    let mut out = bytes::BytesMut::new();
    bind("", "kept", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    let rows = show(&exchange(&mut stream, out).await);
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(rows.contains("D:") && !rows.contains("E:"), "{rows}");
}

/// The client's own Describe of a portal, sent behind a Bind the server refused, does not
/// decide that the portal's rows are harmless (pgjdbc describes every portal it runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_of_a_portal_whose_bind_failed_unmasks_nothing() {
    use common::wire::parse_untyped as parse;
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("describefail").await;
    let t = &seed.table;
    exchange(&mut stream, query("BEGIN")).await;
    let mut out = bytes::BytesMut::new();
    parse(
        "real",
        &format!("SELECT ssn || '' AS v FROM {t} WHERE id = 1"),
        &mut out,
    );
    bind("pp", "real", &mut out);
    frontend::sync(&mut out);
    out.extend_from_slice(&query("SAVEPOINT sp"));
    parse("decoy", "SELECT 'x'::text AS v", &mut out);
    bind("pp", "decoy", &mut out);
    frontend::sync(&mut out);
    out.extend_from_slice(&query("ROLLBACK TO SAVEPOINT sp"));
    frontend::describe(b'P', "pp", &mut out).unwrap();
    frontend::execute("pp", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let rows = until_ready(&mut stream, 5).await;
    exchange(&mut stream, query("ROLLBACK")).await;
    proxy.shutdown(Duration::from_secs(5)).await;
    assert_rows_masked("rows", &rows, &seed);
}

/// A WITH HOLD cursor outlives its transaction on the server; read, closed and declared
/// again in one message, its rows are masked by what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_with_hold_cursor_redeclared_after_its_fetch_unmasks_nothing() {
    let (seed, proxy, mut stream) = wire_session("withhold").await;
    let t = &seed.table;
    exchange(
        &mut stream,
        query(&format!(
            "DECLARE c CURSOR WITH HOLD FOR SELECT ssn || '' AS v FROM {t} WHERE id = 1"
        )),
    )
    .await;
    let rows = show(
        &exchange(
            &mut stream,
            query("FETCH 1 FROM c; CLOSE c; DECLARE c CURSOR WITH HOLD FOR SELECT 'x'::text AS v"),
        )
        .await,
    );
    exchange(&mut stream, query("CLOSE c")).await;
    proxy.shutdown(Duration::from_secs(5)).await;
    assert_rows_masked("rows", &rows, &seed);
}

/// One simple Query running two COPY FROM STDIN, the client sending the first's CopyDone
/// and a Sync in one write: the server reads that Sync in the second COPY's copy-in mode and
/// ignores it. When the second COPY never starts (its table does not exist), the same Sync
/// is answered after the Query. Either way the session goes on, and the next rows are
/// masked by their own statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_between_two_copies_of_one_query_is_whichever_the_server_makes_it() {
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("copiesinquery").await;
    let t = &seed.table;
    let one_row_done_sync = || {
        let mut out = bytes::BytesMut::new();
        frontend::CopyData::new(&b"row\n"[..])
            .unwrap()
            .write(&mut out);
        frontend::copy_done(&mut out);
        frontend::sync(&mut out);
        out
    };
    for (second, ready) in [(format!("{t}_copy"), 2), ("no_such_table_here".into(), 2)] {
        let sql = format!("COPY {t}_copy (v) FROM STDIN; COPY {second} (v) FROM STDIN");
        stream.write_all(&query(&sql)).await.unwrap();
        until_copy_in(&mut stream).await;
        stream.write_all(&one_row_done_sync()).await.unwrap();
        let answers = if second.starts_with("no_such") {
            // The Query's error and ReadyForQuery, then the Sync's ReadyForQuery.
            until_ready(&mut stream, ready).await
        } else {
            // The Sync went to the second COPY; its own CopyDone and Sync end the Query,
            // then the Sync gets its ReadyForQuery.
            until_copy_in(&mut stream).await;
            stream.write_all(&one_row_done_sync()).await.unwrap();
            until_ready(&mut stream, ready).await
        };
        assert_eq!(
            answers.contains("42P01"),
            second.starts_with("no_such"),
            "{answers}"
        );
        let rows = show(
            &exchange(
                &mut stream,
                query(&format!("SELECT ssn || '' AS v FROM {t} WHERE id = 1")),
            )
            .await,
        );
        assert_rows_masked(&second, &rows, &seed);
    }
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// An Execute, in a later pipeline segment, of a name whose Close and Parse the server then
/// skipped runs the earlier statement of that name: its rows are masked as unknown rather
/// than as the text pgwarden expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_behind_a_skipped_parse_is_masked_as_unknown() {
    use common::wire::parse_untyped as parse;
    use postgres_protocol::message::frontend;
    let (seed, proxy, mut stream) = wire_session("portaldoubt").await;
    let t = &seed.table;
    let mut out = bytes::BytesMut::new();
    parse(
        "s",
        &format!("SELECT ssn || '' AS v FROM {t} WHERE id = 1"),
        &mut out,
    );
    frontend::sync(&mut out);
    exchange(&mut stream, out).await;
    let mut out = bytes::BytesMut::new();
    common::wire::redefinition_the_server_skips("z", "s", "SELECT 'x'::text AS v", &mut out);
    bind("", "s", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let answers = until_ready(&mut stream, 2).await;
    proxy.shutdown(Duration::from_secs(5)).await;
    assert!(answers.contains("22012"), "{answers}");
    assert_rows_masked("rows", &answers, &seed);
}

/// Read until the server says CopyInResponse; an error or ReadyForQuery first fails the test.
async fn until_copy_in(stream: &mut TcpStream) {
    loop {
        let (tag, body) = common::wire::read_message(stream).await;
        match tag {
            b'G' => return,
            b'E' | b'Z' => panic!("{}", show(&[(tag, body)])),
            _ => {}
        }
    }
}
