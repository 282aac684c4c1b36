//! The statement gate through real clients: each guardrail in every protocol path, refusals
//! that leave the data untouched and the session usable, decisions on record, hot reload.

mod common;

use common::{sqlstate, Proxy, ProxyOptions, ALICE_PASSWORD};

/// A table alice's role owns (so only pgwarden stands between her and DROP), with 3 rows.
async fn guarded_table(name: &str) {
    let admin = common::direct("app").await;
    admin
        .batch_execute(&format!(
            "SET ROLE app_rw; DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id int); INSERT INTO {name} VALUES (1), (2), (3)"
        ))
        .await
        .unwrap();
}

/// Rows in the table, seen directly (bypassing pgwarden); `None` if it is gone.
async fn rows_of(name: &str) -> Option<i64> {
    let admin = common::direct("app").await;
    admin
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await
        .ok()
        .map(|row| row.get(0))
}

fn refused_by(err: &tokio_postgres::Error, rule: &str) {
    assert_eq!(sqlstate(err).as_deref(), Some("42501"), "{err}");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains(&format!("rule {rule}")), "{message}");
}

/// The server's own error for an EXECUTE of a name not prepared, from pgwarden's rule.
fn unknown_prepared(err: &tokio_postgres::Error, name: &str) {
    assert_eq!(sqlstate(err).as_deref(), Some("26000"), "{err}");
    let db = err.as_db_error().unwrap();
    assert_eq!(
        db.message(),
        format!("prepared statement \"{name}\" does not exist")
    );
    assert!(
        db.hint()
            .unwrap_or("")
            .contains("policy.unknown-prepared-statement"),
        "{db:?}"
    );
}

/// Write `text` as the proxy's config file and reload it, as SIGHUP would.
async fn reload_with(proxy: &Proxy, text: &str) -> Result<(), pgwarden::app::AppError> {
    std::fs::write(&proxy.config_path, text).unwrap();
    proxy
        .server
        .as_ref()
        .unwrap()
        .reload(&proxy.config_path)
        .await
}

/// The proxy's config plus a rule denying everything that touches `table`.
async fn reload_denying(proxy: &Proxy, base: &str, id: &str, table: &str) {
    let text = format!(
        "{base}\n[[policy.rules]]\nid = \"{id}\"\ntables = [\"{table}\"]\naction = \"deny\"\n"
    );
    reload_with(proxy, &text).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrails_refuse_in_every_path_and_leave_the_data_and_the_session_intact() {
    guarded_table("guarded").await;
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;

    // Simple protocol, one statement per message.
    let cases = [
        ("DROP TABLE guarded", "guardrail.drop"),
        ("TRUNCATE guarded", "guardrail.truncate"),
        ("DELETE FROM guarded", "guardrail.no-where"),
        ("UPDATE guarded SET id = 0", "guardrail.no-where"),
        (
            "WITH d AS (DELETE FROM guarded RETURNING *) SELECT count(*) FROM d",
            "guardrail.no-where",
        ),
        ("EXPLAIN ANALYZE DELETE FROM guarded", "guardrail.no-where"),
        ("PREPARE wipe AS DELETE FROM guarded", "guardrail.no-where"),
        (
            "COPY guarded TO '/tmp/pgwarden-guarded.csv'",
            "guardrail.server-files",
        ),
        (
            "COPY guarded FROM PROGRAM 'echo 1'",
            "guardrail.server-files",
        ),
        (
            "SELECT pg_read_file('/etc/hostname')",
            "guardrail.dangerous-functions",
        ),
        (
            "SELECT ARRAY[pg_ls_dir('.')]",
            "guardrail.dangerous-functions",
        ),
        // Column notation: `(x).f` is `f(x)` when x is not a row with a field f.
        (
            "SELECT ('/etc/hostname'::text).pg_read_file",
            "guardrail.dangerous-functions",
        ),
        (
            "SELECT (x).pg_ls_dir FROM (SELECT '.'::text) s(x)",
            "guardrail.dangerous-functions",
        ),
        // … and on a function in FROM, whose row is its value.
        (
            "SELECT t.pg_read_file FROM concat('/etc/hostname') t",
            "guardrail.dangerous-functions",
        ),
        // Dropping a table without DROP TABLE: the type it was made OF, with CASCADE.
        ("DROP TYPE guarded_row CASCADE", "guardrail.drop-cascade"),
        (
            "ALTER SYSTEM SET work_mem = '1GB'",
            "guardrail.alter-system",
        ),
        (
            "SELECT query_to_xml('DROP TABLE guarded', false, false, '')",
            "guardrail.sql-text-functions",
        ),
    ];
    for (sql, rule) in cases {
        let err = client.simple_query(sql).await.unwrap_err();
        refused_by(&err, rule);
        let hint = err.as_db_error().unwrap().hint().unwrap_or_default();
        assert!(hint.contains("guardrail_exempt_groups"), "{sql}: {hint}");
        client.simple_query("SELECT 1").await.unwrap();
    }
    // What EXECUTE's arguments call runs as well as the body, and counts as well.
    client
        .batch_execute("PREPARE echo(text) AS SELECT $1")
        .await
        .unwrap();
    for (sql, rule) in [
        (
            "EXECUTE echo(pg_read_file('/etc/hostname'))",
            "guardrail.dangerous-functions",
        ),
        (
            "EXECUTE echo(set_config('standard_conforming_strings', 'off', false))",
            "policy.locked-setting",
        ),
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        refused_by(&err, rule);
    }
    let echoed = client.simple_query("EXECUTE echo('x')").await.unwrap();
    assert_eq!(echoed.len(), 3, "{echoed:?}");
    // Extended protocol.
    let err = client
        .execute("DELETE FROM guarded", &[])
        .await
        .unwrap_err();
    refused_by(&err, "guardrail.no-where");
    let err = client.prepare("TRUNCATE guarded").await.unwrap_err();
    refused_by(&err, "guardrail.truncate");
    assert_eq!(rows_of("guarded").await, Some(3));

    // A multi-statement message: nothing of it runs, not even the statements before.
    let err = client
        .simple_query("INSERT INTO guarded VALUES (99); DROP TABLE guarded; SELECT 1")
        .await
        .unwrap_err();
    refused_by(&err, "guardrail.drop");
    let detail = err
        .as_db_error()
        .unwrap()
        .detail()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("statement 2"), "{detail}");

    // A pipeline: the refused statement fails in its slot, the others run.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int", &[]),
        client.execute("UPDATE guarded SET id = id + 1", &[]),
        client.query_one("SELECT 3::int", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    refused_by(&b.unwrap_err(), "guardrail.no-where");
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);

    // Inside a transaction: the refusal aborts it, as a server error would.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .simple_query("INSERT INTO guarded VALUES (100)")
        .await
        .unwrap();
    let err = client.simple_query("TRUNCATE guarded").await.unwrap_err();
    refused_by(&err, "guardrail.truncate");
    let aborted = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&aborted).as_deref(), Some("25P02"), "{aborted}");
    client.batch_execute("ROLLBACK").await.unwrap();

    // Held for approval: this pgwarden has no [approvals], so refused, with a hint saying so.
    let err = client
        .simple_query("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .unwrap_err();
    refused_by(&err, "guardrail.code-and-privileges");
    let db = err.as_db_error().unwrap();
    assert!(
        db.message().contains("holds for approval"),
        "{}",
        db.message()
    );
    assert!(
        db.hint().unwrap_or_default().contains("approvals"),
        "{db:?}"
    );
    // LOAD runs a library's code in the server: held too (here, refused).
    let err = client
        .simple_query("LOAD 'auto_explain'")
        .await
        .unwrap_err();
    refused_by(&err, "guardrail.code-and-privileges");
    // So is switching off, dropping or renaming what runs on other people's statements,
    // and handing the table to another owner, though none of them says CREATE TRIGGER or
    // ALTER FUNCTION.
    common::direct("app")
        .await
        .batch_execute(
            "SET ROLE app_rw; \
             CREATE OR REPLACE FUNCTION guarded_keep() RETURNS trigger LANGUAGE plpgsql \
               AS $$ BEGIN RETURN NULL; END $$; \
             CREATE TRIGGER guarded_keep BEFORE TRUNCATE ON guarded \
               FOR EACH STATEMENT EXECUTE FUNCTION guarded_keep()",
        )
        .await
        .unwrap();
    for sql in [
        "ALTER TABLE guarded DISABLE TRIGGER guarded_keep",
        "DROP TRIGGER guarded_keep ON guarded",
        "ALTER FUNCTION guarded_keep() RENAME TO guarded_gone",
        "ALTER TABLE guarded OWNER TO app_ro",
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        refused_by(&err, "guardrail.code-and-privileges");
        client.simple_query("SELECT 1").await.unwrap();
    }
    let trigger = common::direct("app")
        .await
        .query_one(
            "SELECT t.tgenabled::text, p.proname::text, c.relowner::regrole::text \
             FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
             JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname = 'guarded_keep'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            trigger.get::<_, String>(0),
            trigger.get::<_, String>(1),
            trigger.get::<_, String>(2)
        ),
        ("O".into(), "guarded_keep".into(), "app_rw".into())
    );

    // Text PostgreSQL's parser rejects never reaches it; the error is the parser's own.
    let err = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"), "{err}");

    // Everything allowed still works, and the table is exactly as it was.
    client
        .execute("UPDATE guarded SET id = id WHERE id > 0", &[])
        .await
        .unwrap();
    client
        .simple_query("SELECT count(*) FROM guarded")
        .await
        .unwrap();
    assert_eq!(rows_of("guarded").await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_the_refusal_and_its_meta_commands_pass() {
    guarded_table("psql_guarded").await;
    let proxy = Proxy::default().await;
    let conninfo = proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=require");
    let out = common::run_tool(
        &common::psql_path(),
        &["-X", "-d", &conninfo, "-c", "DROP TABLE psql_guarded"],
        &[],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR:  pgwarden denied this statement (rule guardrail.drop)"),
        "{stderr}"
    );
    // psql's describe commands send catalog queries: none is refused.
    for meta in [
        "\\d",
        "\\dt+",
        "\\d psql_guarded",
        "\\l",
        "\\du",
        "\\df",
        "\\dn",
        "\\dv",
        "\\di",
        "\\x",
        "\\conninfo",
    ] {
        let out = common::run_tool(
            &common::psql_path(),
            &["-X", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", meta],
            &[],
        )
        .await;
        assert!(
            out.status.success(),
            "{meta}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(rows_of("psql_guarded").await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_on_record_with_their_rule() {
    let dir = common::harness().dir.join("policy-audit");
    let _ = std::fs::remove_dir_all(&dir);
    guarded_table("audited_guarded").await;
    let proxy = Proxy::start(ProxyOptions {
        extra: format!("[audit]\ndir = \"{}\"\n", dir.display()),
        ..Default::default()
    })
    .await;
    let client = proxy.alice().await;
    client
        .simple_query("DROP TABLE audited_guarded")
        .await
        .unwrap_err();
    client
        .simple_query("SELECT count(*) FROM audited_guarded")
        .await
        .unwrap();
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records: Vec<serde_json::Value> = pgwarden::audit::list_files(&dir)
        .unwrap()
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect();
    let denied = records
        .iter()
        .find(|r| r["type"] == "statement" && r["decision"] == "deny")
        .expect("a denied statement on record");
    assert_eq!(denied["rule"], "guardrail.drop");
    assert_eq!(denied["kinds"], serde_json::json!(["drop table"]));
    assert!(denied["reason"].as_str().unwrap().contains("dropping"));
    // A refused statement has no outcome: it never ran.
    assert!(!records.iter().any(|r| r["type"] == "statement.result"
        && r["session"] == denied["session"]
        && r["statement"] == denied["statement"]));
    assert!(records
        .iter()
        .any(|r| r["type"] == "statement" && r["decision"] == "allow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_decisions_for_open_sessions_and_a_broken_file_does_not() {
    guarded_table("reload_guarded").await;
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    client
        .simple_query("SELECT count(*) FROM reload_guarded")
        .await
        .unwrap();
    // Prepared (Parse) before the reload, run after it.
    let prepared = client
        .prepare("SELECT count(*) FROM reload_guarded")
        .await
        .unwrap();
    client.query(&prepared, &[]).await.unwrap();

    // A rule denying reads of the table, applied to the session that is already open.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let denying = format!(
        "{text}\n[[policy.rules]]\nid = \"no-reload-reads\"\ntables = [\"reload_guarded\"]\n\
         action = \"deny\"\nmessage = \"closed for maintenance\"\n"
    );
    reload_with(&proxy, &denying).await.unwrap();
    let err = client
        .simple_query("SELECT count(*) FROM reload_guarded")
        .await
        .unwrap_err();
    refused_by(&err, "no-reload-reads");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("closed for maintenance"), "{message}");
    let err = client.query(&prepared, &[]).await.unwrap_err();
    refused_by(&err, "no-reload-reads");

    // A broken policy keeps the rules in force.
    let broken = format!(
        "{denying}\n[[policy.rules]]\nid = \"broken\"\nflags = [\"no_wher\"]\naction = \"deny\"\n"
    );
    let failed = reload_with(&proxy, &broken).await.unwrap_err();
    assert!(
        failed.to_string().contains("policy.rules[1].flags"),
        "{failed}"
    );
    let err = client
        .simple_query("SELECT count(*) FROM reload_guarded")
        .await
        .unwrap_err();
    refused_by(&err, "no-reload-reads");

    // Back to the original file: allowed again.
    reload_with(&proxy, &text).await.unwrap();
    client
        .simple_query("SELECT count(*) FROM reload_guarded")
        .await
        .unwrap();
    client.query(&prepared, &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_are_applied_and_locked_and_set_role_stays_within_grants() {
    guarded_table("settings_guarded").await;
    let proxy = Proxy::start(ProxyOptions {
        extra: r#"
[[policy.session]]
groups = ["dev"]
settings = { statement_timeout = "12345", default_transaction_read_only = true }
"#
        .into(),
        ..Default::default()
    })
    .await;
    let client = proxy.alice().await;
    let show = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .expect("a row")
    };
    assert_eq!(
        show(client.simple_query("SHOW statement_timeout").await.unwrap()),
        "12345ms"
    );
    // Read-only by policy: PostgreSQL itself refuses the write.
    let err = client
        .simple_query("INSERT INTO settings_guarded VALUES (9)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");

    for attempt in [
        "SET statement_timeout = 0",
        "SET LOCAL default_transaction_read_only = off",
        "SELECT set_config('statement_timeout', '0', false)",
        "SET standard_conforming_strings = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        // pg_settings turns an UPDATE into set_config; any qualification is set_config.
        "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'",
        "SELECT app.pg_catalog.set_config('statement_timeout', '0', false)",
        // A transaction's own mode overrides the locked default.
        "BEGIN READ WRITE",
        "START TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE",
        "BEGIN; SET TRANSACTION READ WRITE",
        "SET transaction_read_only = off",
    ] {
        let err = client.simple_query(attempt).await.unwrap_err();
        refused_by(&err, "policy.locked-setting");
    }
    // Setting a locked setting to the value it is locked at changes nothing: allowed (JDBC's
    // setReadOnly(true) sends the first).
    client
        .simple_query(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; \
             BEGIN READ ONLY; COMMIT; SET standard_conforming_strings = on",
        )
        .await
        .unwrap();
    // RESET returns to the policy's value, so it is allowed.
    client
        .simple_query("RESET statement_timeout")
        .await
        .unwrap();
    client.simple_query("DISCARD ALL").await.unwrap();
    assert_eq!(
        show(client.simple_query("SHOW statement_timeout").await.unwrap()),
        "12345ms"
    );
    // Other settings stay the session's own business.
    client.simple_query("SET work_mem = '8MB'").await.unwrap();

    // SET ROLE only toward roles [[access]] grants alice (app_rw), never app_ro.
    let err = client.simple_query("SET ROLE app_ro").await.unwrap_err();
    refused_by(&err, "policy.set-role");
    client.simple_query("SET ROLE app_rw").await.unwrap();
    client.simple_query("RESET ROLE").await.unwrap();
    let err = client
        .simple_query("SET SESSION AUTHORIZATION app_ro")
        .await
        .unwrap_err();
    refused_by(&err, "policy.set-role");

    // Encodings whose multi-byte characters can end in an ASCII quote cannot be switched
    // to: a statement pipelined behind the SET would be read differently by pgwarden and
    // by PostgreSQL.
    for attempt in [
        "SET client_encoding TO 'SJIS'",
        "SET NAMES 'big5'",
        "SET client_encoding = 'Shift_JIS'",
        "SELECT set_config('client_encoding', 'WIN936', false)",
    ] {
        let err = client.simple_query(attempt).await.unwrap_err();
        refused_by(&err, "policy.client-encoding");
    }
    client
        .simple_query("SET client_encoding TO 'LATIN1'; RESET client_encoding")
        .await
        .unwrap();
    // Nor can a session start in one: RESET, ROLLBACK and DISCARD ALL go back to the
    // startup value, and a statement pipelined behind them would be misread.
    for options in [
        "options='-c client_encoding=SJIS'",
        "options='--client-encoding=big5'",
    ] {
        let err = proxy
            .try_connect(&proxy.conninfo(
                "alice",
                ALICE_PASSWORD,
                &format!("sslmode=disable {options}"),
            ))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    }
    {
        use common::wire;
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(&wire::startup_packet(
                wire::PROTOCOL_3_0,
                &[
                    ("user", b"alice"),
                    ("database", b"app"),
                    ("client_encoding", b"SJIS"),
                ],
            ))
            .await
            .unwrap();
        let sasl = wire::read_message(&mut stream).await;
        let mut reply = wire::scram(&mut stream, sasl, ALICE_PASSWORD).await;
        while reply.0 != b'E' {
            assert_ne!(reply.0, b'Z', "a session started in SJIS");
            reply = wire::read_message(&mut stream).await;
        }
        let refusal = wire::error_fields(&reply.1);
        assert_eq!(refusal[&b'C'], "0A000", "{refusal:?}");
    }

    // A locked setting in the startup packet refuses the login itself.
    let refused = proxy
        .try_connect(&proxy.conninfo(
            "alice",
            ALICE_PASSWORD,
            "sslmode=disable options='-c statement_timeout=0'",
        ))
        .await;
    let Err(err) = refused else {
        panic!("a login overriding a locked setting succeeded")
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("statement_timeout"),
        "{err}"
    );
    // Unlocked settings in options pass.
    let ok = proxy
        .try_connect(&proxy.conninfo(
            "alice",
            ALICE_PASSWORD,
            "sslmode=disable options='-c work_mem=16MB'",
        ))
        .await
        .unwrap();
    assert_eq!(
        show(ok.simple_query("SHOW work_mem").await.unwrap()),
        "16MB"
    );
    // The server's other switches set settings under names pgwarden does not check (-S is
    // work_mem): refused.
    let Err(err) = proxy
        .try_connect(&proxy.conninfo(
            "alice",
            ALICE_PASSWORD,
            "sslmode=disable options='-S 1000000'",
        ))
        .await
    else {
        panic!("a login with -S in options succeeded")
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");

    // The startup packet can set `role` too, which PostgreSQL applies before the first
    // statement: judged as SET ROLE is. app_rw is a member of app_power, which [[access]]
    // does not grant alice.
    common::direct("app")
        .await
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_power') \
             THEN CREATE ROLE app_power NOLOGIN; END IF; END $$; GRANT app_power TO app_rw;",
        )
        .await
        .unwrap();
    for options in [
        "options='-c role=app_power'",
        "options='--role=app_power'",
        "options='-c session_authorization=app_ro'",
        "options='-c work_mem=1MB -crole=app_power'",
    ] {
        let refused = proxy
            .try_connect(&proxy.conninfo(
                "alice",
                ALICE_PASSWORD,
                &format!("sslmode=disable {options}"),
            ))
            .await;
        let Err(err) = refused else {
            panic!("a login with {options} succeeded")
        };
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{options}: {err}");
    }
    let own_role = proxy
        .try_connect(&proxy.conninfo(
            "alice",
            ALICE_PASSWORD,
            "sslmode=disable options='-c role=app_rw'",
        ))
        .await
        .unwrap();
    assert_eq!(
        show(own_role.simple_query("SELECT current_user").await.unwrap()),
        "app_rw"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_is_judged_by_the_prepared_body() {
    guarded_table("prepared_guarded").await;
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    client
        .simple_query("PREPARE count_rows AS SELECT count(*) FROM prepared_guarded")
        .await
        .unwrap();
    client.simple_query("EXECUTE count_rows").await.unwrap();
    // Unknown to pgwarden: refused rather than run blind, as the server would refuse it.
    let err = client
        .simple_query("EXECUTE nobody_prepared_this")
        .await
        .unwrap_err();
    unknown_prepared(&err, "nobody_prepared_this");

    // A rule loaded after the PREPARE applies to the EXECUTE.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    reload_denying(&proxy, &text, "no-counting", "prepared_guarded").await;
    let err = client.simple_query("EXECUTE count_rows").await.unwrap_err();
    refused_by(&err, "no-counting");
    client.simple_query("DEALLOCATE count_rows").await.unwrap();
    let err = client.simple_query("EXECUTE count_rows").await.unwrap_err();
    unknown_prepared(&err, "count_rows");

    // A protocol-level statement that is itself `EXECUTE name`: SQL EXECUTE of it runs the
    // inner body, and is judged by it under the rules of the moment.
    let proxy = Proxy::default().await;
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    use common::wire::{alice_login, sqlstates_until_ready};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    alice_login(&mut stream).await;
    let mut exchange = async |out: bytes::BytesMut, answers: usize| {
        stream.write_all(&out).await.unwrap();
        sqlstates_until_ready(&mut stream, answers).await
    };
    let mut out = bytes::BytesMut::new();
    frontend::query(
        "PREPARE inner_count AS SELECT count(*) FROM prepared_guarded",
        &mut out,
    )
    .unwrap();
    common::wire::parse_untyped("outer_count", "EXECUTE inner_count", &mut out);
    frontend::sync(&mut out);
    assert_eq!(exchange(out, 2).await, Vec::<String>::new());
    reload_denying(&proxy, &text, "no-counting-now", "prepared_guarded").await;
    let mut out = bytes::BytesMut::new();
    frontend::query("EXECUTE outer_count", &mut out).unwrap();
    assert_eq!(exchange(out, 1).await, ["42501"], "EXECUTE outer_count ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unqualified_names_are_judged_in_the_sessions_search_path() {
    let admin = common::direct("app").await;
    admin
        .batch_execute(
            "SET ROLE app_rw; CREATE SCHEMA IF NOT EXISTS hidden; \
             CREATE TABLE IF NOT EXISTS hidden.secrets (id int); \
             CREATE TABLE IF NOT EXISTS hidden.twin (id int); \
             CREATE TABLE IF NOT EXISTS public.twin (id int)",
        )
        .await
        .unwrap();
    let proxy = Proxy::start(ProxyOptions {
        extra:
            "[[policy.rules]]\nid = \"hidden-schema\"\ntables = [\"hidden.*\"]\naction = \"deny\"\n"
                .into(),
        ..Default::default()
    })
    .await;
    let client = proxy.alice().await;
    let err = client
        .simple_query("SELECT * FROM hidden.secrets")
        .await
        .unwrap_err();
    refused_by(&err, "hidden-schema");
    // A statement prepared under one search_path and executed under another: PostgreSQL
    // plans it again (public.twin, then hidden.twin), and so it is judged again.
    let twin = client.prepare("SELECT * FROM twin").await.unwrap();
    client.query(&twin, &[]).await.unwrap();
    client
        .simple_query("SET search_path = hidden, public")
        .await
        .unwrap();
    let err = client.query(&twin, &[]).await.unwrap_err();
    refused_by(&err, "hidden-schema");
    // Pipelined behind a failing statement, a RESET is uncertain when sent; its own clean
    // ReadyForQuery outside a transaction makes the search_path exact again.
    {
        use common::wire::alice_login;
        use postgres_protocol::message::frontend;
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        alice_login(&mut stream).await;
        let mut errors = Vec::new();
        let batches: [&[&str]; 3] = [
            &["SET search_path = hidden, public"],
            &["SELECT 1/0", "RESET search_path"],
            &["SELECT * FROM twin"],
        ];
        for batch in batches {
            // The Queries of a batch in one write: each sent before the last is answered.
            let mut out = bytes::BytesMut::new();
            for sql in batch {
                frontend::query(sql, &mut out).unwrap();
            }
            stream.write_all(&out).await.unwrap();
            errors.extend(common::wire::sqlstates_until_ready(&mut stream, batch.len()).await);
        }
        assert_eq!(
            errors,
            ["22012"],
            "twin read as public.twin after the RESET"
        );
    }
    // tokio-postgres reports the refusal before its ReadyForQuery, so this RESET may reach
    // pgwarden while that message is still in flight: pgwarden cannot be sure at once that
    // the RESET takes effect, and is once its own ReadyForQuery comes back, idle and clean.
    client.simple_query("RESET search_path").await.unwrap();
    client.query(&twin, &[]).await.unwrap();
    // Not on the search_path: the name means something else (and does not exist).
    let err = client
        .simple_query("SELECT * FROM secrets")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"), "{err}");

    client
        .simple_query("SET search_path = hidden, public")
        .await
        .unwrap();
    let err = client
        .simple_query("SELECT * FROM secrets")
        .await
        .unwrap_err();
    refused_by(&err, "hidden-schema");
    // A change the server may undo (rolled back here) leaves both paths possible.
    for step in ["BEGIN", "SET search_path = public", "ROLLBACK"] {
        client.simple_query(step).await.unwrap();
    }
    let err = client
        .simple_query("SELECT * FROM secrets")
        .await
        .unwrap_err();
    refused_by(&err, "hidden-schema");
    client.simple_query("RESET search_path").await.unwrap();
    let err = client
        .simple_query("SELECT * FROM secrets")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"), "{err}");

    client
        .simple_query("SELECT set_config('search_path', 'HIDDEN', false)")
        .await
        .unwrap();
    let err = client
        .execute("SELECT * FROM secrets", &[])
        .await
        .unwrap_err();
    refused_by(&err, "hidden-schema");

    // None of these changes the session's path (a SET LOCAL outside a transaction, a
    // set_config no row calls or for the transaction only, a SET an error stops, an ALTER
    // ROLE … SET, which is for later sessions): hidden stays possible.
    client
        .simple_query("SET search_path = hidden, public")
        .await
        .unwrap();
    for attempt in [
        "SET LOCAL search_path = public",
        "SELECT set_config('search_path', 'public', true)",
        "SELECT set_config('search_path', 'public', false) WHERE false",
        "SELECT 1/0; SET search_path = public",
        "ALTER ROLE nobody_has_this_name SET search_path = public",
    ] {
        let _ = client.simple_query(attempt).await;
        let err = client
            .simple_query("SELECT * FROM secrets")
            .await
            .unwrap_err();
        refused_by(&err, "hidden-schema");
    }

    // A role's own default search_path (set outside pgwarden) is what its sessions start
    // with: pgwarden asks the server at login.
    admin
        .batch_execute(
            "RESET ROLE; ALTER ROLE app_ro IN DATABASE app SET search_path = hidden, public",
        )
        .await
        .unwrap();
    let bob = proxy.connect("bob", common::BOB_PASSWORD).await;
    let refused = bob.simple_query("SELECT * FROM secrets").await;
    admin
        .batch_execute("ALTER ROLE app_ro IN DATABASE app RESET search_path")
        .await
        .unwrap();
    refused_by(&refused.unwrap_err(), "hidden-schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_own_temporary_tables_may_be_dropped_and_truncated_by_pg_temp_name() {
    guarded_table("guarded_beside_temp").await;
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    client
        .batch_execute(
            "CREATE TEMP TABLE scratch (id int); INSERT INTO scratch VALUES (1), (2); \
             CREATE TEMP TABLE guarded_beside_temp (id int)",
        )
        .await
        .unwrap();
    // pg_temp names this session's temporary schema and nothing else.
    client
        .simple_query("TRUNCATE pg_temp.scratch")
        .await
        .unwrap();
    let left = client
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap();
    assert_eq!(left.get::<_, i64>(0), 0);
    client
        .execute("DROP TABLE IF EXISTS pg_temp.scratch", &[])
        .await
        .unwrap();
    // Unqualified, a name may reach a permanent table (search_path decides, and may be
    // changed): refused as before, with the way out in the message.
    let err = client
        .simple_query("DROP TABLE guarded_beside_temp")
        .await
        .unwrap_err();
    refused_by(&err, "guardrail.drop");
    let message = err.as_db_error().unwrap().to_string();
    assert!(message.contains("pg_temp."), "{message}");
    // One permanent table among them refuses the whole statement.
    let err = client
        .simple_query("DROP TABLE pg_temp.guarded_beside_temp, public.guarded_beside_temp")
        .await
        .unwrap_err();
    refused_by(&err, "guardrail.drop");
    let err = client
        .simple_query("TRUNCATE pg_temp.guarded_beside_temp, guarded_beside_temp")
        .await
        .unwrap_err();
    refused_by(&err, "guardrail.truncate");
    // A schema that only looks like it is not the temporary one.
    let err = client
        .simple_query("DROP TABLE \"PG_TEMP\".guarded_beside_temp")
        .await
        .unwrap_err();
    refused_by(&err, "guardrail.drop");
    client
        .simple_query("DROP TABLE pg_temp.guarded_beside_temp")
        .await
        .unwrap();
    assert_eq!(rows_of("guarded_beside_temp").await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_statements_are_checked_and_too_deep_ones_refused() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    // Generated SQL nests deep: 1500 concatenations is one left-deep tree of 1500 levels.
    let deep = format!("SELECT length({})", vec!["'x'"; 1500].join(" || "));
    let rows = client.simple_query(&deep).await.unwrap();
    let length = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(length.as_deref(), Some("1500"));
    // Deeper than PostgreSQL's parser goes: refused with the server's own code for it, and
    // the proxy carries on.
    let too_deep = format!("SELECT {}", vec!["1"; 100_000].join("+"));
    let err = client.simple_query(&too_deep).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54001"), "{err}");
    client.simple_query("SELECT 1").await.unwrap();
    proxy.alice().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_protocol_execute_of_a_prepared_name_is_judged_at_each_run() {
    guarded_table("portal_guarded").await;
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    client
        .simple_query("PREPARE count_portal AS SELECT count(*) FROM portal_guarded")
        .await
        .unwrap();
    // `EXECUTE count_portal` prepared through the extended protocol, run twice.
    let statement = client.prepare("EXECUTE count_portal").await.unwrap();
    client.query(&statement, &[]).await.unwrap();
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    reload_denying(&proxy, &text, "no-portal-reads", "portal_guarded").await;
    let err = client.query(&statement, &[]).await.unwrap_err();
    refused_by(&err, "no-portal-reads");
    client.simple_query("SELECT 1").await.unwrap();
}

/// pg_cancel_backend / pg_terminate_backend: a person may signal their own sessions through
/// pgwarden (by process id, as `pg_backend_pid()` shows it), nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_may_cancel_and_terminate_their_own_sessions_only() {
    let proxy = Proxy::default().await;
    let busy = proxy.alice().await;
    let pid: i32 = busy
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sleeping = tokio::spawn(async move {
        let result = busy.batch_execute("SELECT pg_sleep(30)").await;
        (result, busy)
    });
    // Wait until the sleep is running.
    let admin = common::direct("postgres").await;
    for _ in 0..100 {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query = 'SELECT pg_sleep(30)'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if running == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Someone else (bob, another person on another role) may not, however it is written.
    let bob = proxy.connect("bob", common::BOB_PASSWORD).await;
    for sql in [
        format!("SELECT pg_cancel_backend({pid})"),
        format!("SELECT pg_terminate_backend({pid})"),
        format!("SELECT ({pid}).pg_cancel_backend"),
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity".to_owned(),
        "SELECT (pid).pg_terminate_backend FROM pg_stat_activity".to_owned(),
    ] {
        let err = bob.batch_execute(&sql).await.unwrap_err();
        refused_by(&err, "guardrail.other-sessions");
    }
    // Neither may alice signal a backend that is not one of her sessions, or one she names
    // by a computed value (pgwarden cannot tell whose it is).
    let alice = proxy.alice().await;
    let bobs_pid: i32 = bob
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for sql in [
        format!("SELECT pg_terminate_backend({bobs_pid})"),
        format!("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = {pid}"),
    ] {
        let err = alice.batch_execute(&sql).await.unwrap_err();
        refused_by(&err, "guardrail.other-sessions");
    }
    assert!(
        !sleeping.is_finished(),
        "a refused cancel reached the server"
    );

    // Alice cancels her own sleeping session from another one of hers.
    let cancelled: bool = alice
        .query_one(&format!("SELECT pg_cancel_backend({pid})"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    let (result, busy) = tokio::time::timeout(std::time::Duration::from_secs(10), sleeping)
        .await
        .expect("the cancelled sleep did not end")
        .unwrap();
    assert_eq!(
        sqlstate(&result.unwrap_err()).as_deref(),
        Some("57014"),
        "query_canceled"
    );
    busy.batch_execute("SELECT 1").await.unwrap();
    // And may end it (written in column notation: the process id is read all the same).
    let terminated: bool = alice
        .query_one(&format!("SELECT ({pid}).pg_terminate_backend"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    bob.batch_execute("SELECT 1").await.unwrap();
    proxy.shutdown(std::time::Duration::from_secs(5)).await;
}

/// Rules for a role apply once the session runs as it: after SET ROLE, and to the statements
/// after a SET ROLE in the same message; a SET of the search_path earlier in a message counts
/// for the names after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_and_search_path_in_a_message_count_for_what_follows() {
    guarded_table("role_guarded").await;
    let admin = common::direct("app").await;
    admin
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_power') \
             THEN CREATE ROLE app_power NOLOGIN; END IF; END $$; GRANT app_power TO app_rw; \
             SET ROLE app_rw; CREATE SCHEMA IF NOT EXISTS hidden; \
             CREATE TABLE IF NOT EXISTS hidden.secrets (id int); RESET ROLE; \
             GRANT DELETE ON role_guarded TO app_power;",
        )
        .await
        .unwrap();
    let proxy = Proxy::start(ProxyOptions {
        extra: "[[upstream.roles]]\nname = \"app_power\"\n\n\
                [[access]]\nusers = [\"alice\"]\ndatabases = [\"app\"]\nroles = [\"app_power\"]\n\n\
                [[policy.rules]]\nid = \"power-deletes\"\nroles = [\"app_power\"]\nstatements = [\"delete\"]\naction = \"deny\"\n\n\
                [[policy.rules]]\nid = \"hidden-schema\"\ntables = [\"hidden.*\"]\naction = \"deny\"\n"
            .into(),
        ..Default::default()
    })
    .await;
    let client = proxy.alice().await;
    // As app_rw: allowed.
    client
        .simple_query("DELETE FROM role_guarded WHERE id = 1")
        .await
        .unwrap();
    client.simple_query("SET ROLE app_power").await.unwrap();
    let err = client
        .simple_query("DELETE FROM role_guarded WHERE id = 2")
        .await
        .unwrap_err();
    refused_by(&err, "power-deletes");
    client.simple_query("RESET ROLE").await.unwrap();
    client
        .simple_query("DELETE FROM role_guarded WHERE id = 2")
        .await
        .unwrap();
    // In one message: the statements after the SET are judged as they will run.
    for message in [
        "SET ROLE app_power; DELETE FROM role_guarded WHERE id = 3",
        "SET search_path = hidden, public; SELECT * FROM secrets",
    ] {
        let err = client.simple_query(message).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{message}: {err}");
    }
    // RESET ALL leaves the role as it is (PostgreSQL's role is not reset by it).
    client.simple_query("SET ROLE app_power").await.unwrap();
    client.simple_query("RESET ALL").await.unwrap();
    let err = client
        .simple_query("DELETE FROM role_guarded WHERE id = 3")
        .await
        .unwrap_err();
    refused_by(&err, "power-deletes");
    client.simple_query("RESET ROLE").await.unwrap();
    // A SET LOCAL ROLE ends with its transaction.
    for step in ["BEGIN", "SET LOCAL ROLE app_power", "COMMIT"] {
        client.simple_query(step).await.unwrap();
    }
    client
        .simple_query("DELETE FROM role_guarded WHERE id = 42")
        .await
        .unwrap();
    // set_config run by EXECUTE changes what names mean as much as a SET.
    client
        .simple_query("PREPARE to_hidden AS SELECT set_config('search_path', 'hidden', false)")
        .await
        .unwrap();
    client
        .simple_query("SET search_path = public")
        .await
        .unwrap();
    client.simple_query("EXECUTE to_hidden").await.unwrap();
    let err = client
        .simple_query("SELECT * FROM secrets")
        .await
        .unwrap_err();
    refused_by(&err, "hidden-schema");
    // A SET sent through the extended protocol settles too: back on public, `secrets` is
    // not hidden.secrets (and does not exist).
    client
        .execute("SET search_path = public", &[])
        .await
        .unwrap();
    let err = client
        .simple_query("SELECT * FROM secrets")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"), "{err}");
    // A Query between an extended-protocol SET and its Sync may change the path again: the
    // SET does not settle it.
    {
        use common::wire::alice_login;
        use postgres_protocol::message::frontend;
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        alice_login(&mut stream).await;
        let mut out = bytes::BytesMut::new();
        common::wire::parse_untyped("", "SET search_path = public", &mut out);
        common::wire::bind_without_parameters("", "", &mut out);
        frontend::execute("", 0, &mut out).unwrap();
        frontend::query("SET search_path = hidden, public", &mut out).unwrap();
        frontend::sync(&mut out);
        frontend::query("SELECT * FROM secrets", &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
        let codes = common::wire::sqlstates_until_ready(&mut stream, 3).await;
        assert_eq!(codes, ["42501"], "secrets read as public.secrets");
    }
    // A statement prepared before a SET ROLE is judged again, as the new role, when it runs.
    let delete = client
        .prepare("DELETE FROM role_guarded WHERE id = $1")
        .await
        .unwrap();
    client.simple_query("SET ROLE app_power").await.unwrap();
    let err = client.execute(&delete, &[&3]).await.unwrap_err();
    refused_by(&err, "power-deletes");
    client.simple_query("RESET ROLE").await.unwrap();
    // CREATE TABLE … AS EXECUTE (also under EXPLAIN ANALYZE) would be judged by the body
    // alone; a view over pg_settings could be written like pg_settings.
    for attempt in [
        "CREATE TABLE copied AS EXECUTE to_hidden",
        "EXPLAIN ANALYZE CREATE TABLE copied AS EXECUTE to_hidden",
        "CREATE TEMP VIEW settings_view AS SELECT name, setting FROM pg_catalog.pg_settings",
    ] {
        let err = client.simple_query(attempt).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{attempt}: {err}");
    }
    assert_eq!(rows_of("role_guarded").await, Some(1));

    // A session started as another role (startup `role`) returns to it on RESET ROLE.
    let started = proxy
        .try_connect(&proxy.conninfo(
            "alice",
            ALICE_PASSWORD,
            "sslmode=disable options='-c role=app_power'",
        ))
        .await
        .unwrap();
    started.simple_query("RESET ROLE").await.unwrap();
    let err = started
        .simple_query("DELETE FROM role_guarded WHERE id = 3")
        .await
        .unwrap_err();
    refused_by(&err, "power-deletes");
}

/// A Close and Parse of a protocol statement that the server skips (an earlier message of
/// their pipeline failed) leave the old statement of that name in place: an Execute of the
/// name sent right behind them is judged by the old text too, under the rules of the moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_behind_a_skipped_parse_is_judged_by_the_statement_the_server_keeps() {
    use common::wire::{alice_login, bind_without_parameters, parse_untyped};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    guarded_table("skipped_parse").await;
    let proxy = Proxy::default().await;
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    alice_login(&mut stream).await;
    let mut out = bytes::BytesMut::new();
    parse_untyped("s", "DELETE FROM skipped_parse WHERE id = 1", &mut out);
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let codes = common::wire::sqlstates_until_ready(&mut stream, 1).await;
    assert!(codes.is_empty(), "{codes:?}");
    reload_denying(&proxy, &text, "no-deleting", "skipped_parse").await;
    let mut out = bytes::BytesMut::new();
    common::wire::redefinition_the_server_skips("z", "s", "SELECT 1", &mut out);
    bind_without_parameters("", "s", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let codes = common::wire::sqlstates_until_ready(&mut stream, 2).await;
    assert_eq!(codes, ["22012", "42501"]);
    // A portal bound the same way, run once every answer is in: its statement is not
    // known, so it is refused.
    let mut out = bytes::BytesMut::new();
    common::wire::redefinition_the_server_skips("", "s", "SELECT 2", &mut out);
    frontend::query("BEGIN", &mut out).unwrap();
    bind_without_parameters("p", "s", &mut out);
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let codes = common::wire::sqlstates_until_ready(&mut stream, 3).await;
    assert_eq!(codes, ["22012"]);
    let mut out = bytes::BytesMut::new();
    frontend::execute("p", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let (tag, body) = common::wire::read_message(&mut stream).await;
    assert_eq!(tag, b'E');
    let fields = common::wire::error_fields(&body);
    assert!(
        fields[&b'M'].contains("policy.statement-in-doubt"),
        "{fields:?}"
    );
    common::wire::sqlstates_until_ready(&mut stream, 1).await;
    drop(stream);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    assert_eq!(rows_of("skipped_parse").await, Some(3));
}

/// A named Parse the server skipped (an earlier message of its segment failed), sent again in
/// the next segment, defines the statement there: pgwarden must not forget the name when the
/// first Parse's failure arrives, or it refuses a later Bind of a statement the server has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_sent_again_after_a_skipped_one_defines_the_statement() {
    use common::wire::{alice_login, bind_without_parameters, parse_untyped, read_message};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let proxy = Proxy::default().await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    alice_login(&mut stream).await;
    let sql = "SELECT 41 + 1 AS answer";
    let mut out = bytes::BytesMut::new();
    common::wire::redefinition_the_server_skips("z", "s", sql, &mut out);
    parse_untyped("s", sql, &mut out);
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let codes = common::wire::sqlstates_until_ready(&mut stream, 2).await;
    assert_eq!(codes, ["22012"]);
    let mut out = bytes::BytesMut::new();
    bind_without_parameters("", "s", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let mut rows = Vec::new();
    loop {
        let (tag, body) = read_message(&mut stream).await;
        match tag {
            b'E' => panic!("{:?}", common::wire::error_fields(&body)),
            b'D' => rows.push(body),
            b'Z' => break,
            _ => {}
        }
    }
    // One row of one column: its length word, then "42".
    assert_eq!(rows, [b"\0\x01\0\0\0\x0242".to_vec()]);
    drop(stream);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
}

/// Idle sessions end by policy the way PostgreSQL ends them (`idle_session_timeout`,
/// `idle_in_transaction_session_timeout` as locked session settings): the client gets the
/// server's FATAL through pgwarden, which goes on serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_end_by_policy_with_the_servers_fatal() {
    let proxy = Proxy::start(ProxyOptions {
        extra: r#"
[[policy.session]]
groups = ["dev"]
settings = { idle_session_timeout = "1s", idle_in_transaction_session_timeout = "1s" }
"#
        .into(),
        ..Default::default()
    })
    .await;
    // The connection task's result: how the session ended.
    let ended = |setup: &'static str| {
        let conninfo = proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable");
        async move {
            let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(connection);
            client.batch_execute(setup).await.unwrap();
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("the idle session was not ended within 10 s")
                .unwrap();
            (client, ended)
        }
    };
    let (idle, idle_end) = ended("SELECT 1").await;
    let err = idle_end.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P05"), "{err}");
    assert!(idle.is_closed());
    let (_, in_transaction_end) = ended("BEGIN; SELECT 1").await;
    let err = in_transaction_end.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P03"), "{err}");
    // Locked: a session cannot lift its own timeout.
    let client = proxy.alice().await;
    let err = client
        .simple_query("SET idle_session_timeout = 0")
        .await
        .unwrap_err();
    refused_by(&err, "policy.locked-setting");
    client.simple_query("SELECT 1").await.unwrap();
}
