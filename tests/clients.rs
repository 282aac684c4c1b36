//! Real libpq clients through pgwarden: psql (queries, `\d`, `\copy`, large objects over the
//! FunctionCall message, a LATIN1 client encoding) and pgbench in all three query modes.

mod common;

use std::path::Path;
use std::process::Output;

use common::{harness, Proxy, ALICE_PASSWORD};

/// libpq connection string for alice through `proxy` (sslmode left at libpq's default
/// `prefer`, so these clients negotiate TLS with pgwarden like real ones do).
fn alice_conninfo(proxy: &Proxy) -> String {
    format!("host=127.0.0.1 port={} dbname=app user=alice", proxy.port())
}

/// Run psql as alice through `proxy`: `-X -v ON_ERROR_STOP=1 -d <conninfo>` then `args`.
async fn psql_as_alice(proxy: &Proxy, args: &[&str], env: &[(&str, &str)]) -> Output {
    let conninfo = alice_conninfo(proxy);
    let mut all = vec!["-X", "-v", "ON_ERROR_STOP=1", "-d", conninfo.as_str()];
    all.extend_from_slice(args);
    let mut all_env = vec![("PGPASSWORD", ALICE_PASSWORD)];
    all_env.extend_from_slice(env);
    common::run_tool(&common::psql_path(), &all, &all_env).await
}

/// Assert a tool succeeded and return its stdout as text.
fn success(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// A fresh path in the harness dir (not created).
fn scratch_path(name: &str) -> std::path::PathBuf {
    // write_file gives a unique name; remove the empty file so tools create it themselves.
    let path = common::write_file(name, "");
    std::fs::remove_file(&path).expect("remove placeholder");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_select_one() {
    let proxy = Proxy::default().await;
    let output = psql_as_alice(&proxy, &["-At", "-c", "select 1"], &[]).await;
    assert_eq!(success("psql -c 'select 1'", &output), "1\n");
    // The session is app_rw upstream, and libpq (sslmode=prefer) got TLS from pgwarden.
    let output = psql_as_alice(
        &proxy,
        &["-At", "-c", "select current_user", "-c", r"\conninfo"],
        &[],
    )
    .await;
    let text = success("psql current_user", &output);
    assert!(text.starts_with("app_rw\n"), "{text}");
    assert!(text.contains("SSL connection (protocol: TLSv1."), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describe_table() {
    let proxy = Proxy::default().await;
    let output = psql_as_alice(&proxy, &["-c", r"\d items"], &[]).await;
    let text = success(r"psql \d items", &output);
    assert!(text.contains("Table \"public.items\""), "{text}");
    let column_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains('|'))
        .map(|l| l.trim())
        .filter(|l| l.starts_with("id ") || l.starts_with("name "))
        .collect();
    assert_eq!(column_lines.len(), 2, "{text}");
    assert!(
        column_lines[0].starts_with("id ") && column_lines[0].contains("integer"),
        "{text}"
    );
    assert!(
        column_lines[1].starts_with("name ") && column_lines[1].contains("text"),
        "{text}"
    );
    assert!(
        text.contains("items_pkey"),
        "the index list is missing: {text}"
    );
}

/// One CSV field as PostgreSQL writes it: quoted only when needed, `None` is NULL.
fn csv_field(value: Option<&str>) -> String {
    match value {
        None => String::new(),
        Some(s) if s.is_empty() || s.contains([',', '"', '\n', '\r']) => {
            format!("\"{}\"", s.replace('"', "\"\""))
        }
        Some(s) => s.to_owned(),
    }
}

/// The value of column `name` in row `i` of the COPY test data.
fn copy_name(i: usize) -> Option<String> {
    const SHAPES: [&str; 9] = [
        "plain",
        "with, a comma",
        "with \"double\" quotes",
        "ünïcödé ✓ 日本語 🐘",
        "two\nlines",
        "  padded  ",
        r"back\slash and \N",
        "semi;colon|pipe\ttab",
        "'single' quotes",
    ];
    match i % 11 {
        9 => None,
        10 => Some(String::new()),
        k => Some(format!("{} #{i}", SHAPES[k])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_in_and_out_round_trips_byte_for_byte() {
    const ROWS: usize = 5000;
    let proxy = Proxy::default().await;
    let utf8 = [("PGCLIENTENCODING", "UTF8")];
    let create = "CREATE TABLE copy_round_trip (id int, name text, price numeric, note text)";
    success(
        "create table",
        &psql_as_alice(&proxy, &["-c", create], &utf8).await,
    );

    let mut csv = String::new();
    for i in 0..ROWS {
        let name = copy_name(i);
        let note = (i % 7 != 3).then(|| format!("note, \"{i}\" é"));
        csv.push_str(&format!(
            "{i},{},{}.{:02},{}\n",
            csv_field(name.as_deref()),
            i * 3,
            i % 100,
            csv_field(note.as_deref())
        ));
    }
    let input = common::write_file("copy-in.csv", &csv);
    let output_path = scratch_path("copy-out.csv");
    let copy_in = format!(r"\copy copy_round_trip FROM '{}' CSV", path_str(&input));
    let text = success(
        r"\copy FROM",
        &psql_as_alice(&proxy, &["-c", &copy_in], &utf8).await,
    );
    assert_eq!(text.trim(), format!("COPY {ROWS}"));

    // The server saw the values, not just bytes: spot-check the tricky ones.
    let check = "SELECT count(*), count(name), count(*) FILTER (WHERE name = ''), \
                 (SELECT name FROM copy_round_trip WHERE id = 4), \
                 (SELECT name FROM copy_round_trip WHERE id = 2) \
                 FROM copy_round_trip";
    let text = success(
        "check",
        &psql_as_alice(&proxy, &["-At", "-c", check], &utf8).await,
    );
    let nulls = (0..ROWS).filter(|i| i % 11 == 9).count();
    let empties = (0..ROWS).filter(|i| i % 11 == 10).count();
    assert_eq!(
        text,
        format!(
            "{ROWS}|{}|{empties}|two\nlines #4|with \"double\" quotes #2\n",
            ROWS - nulls
        )
    );

    // `\copy copy_round_trip TO` would write heap order, which is not insertion order even for
    // one fresh COPY (PostgreSQL fills earlier pages' free space, directly too): sort by id.
    let copy_out = format!(
        r"\copy (SELECT * FROM copy_round_trip ORDER BY id) TO '{}' CSV",
        path_str(&output_path)
    );
    let text = success(
        r"\copy TO",
        &psql_as_alice(&proxy, &["-c", &copy_out], &utf8).await,
    );
    assert_eq!(text.trim(), format!("COPY {ROWS}"));
    let written = std::fs::read(&output_path).expect("read the exported CSV");
    if written != csv.as_bytes() {
        let written = String::from_utf8_lossy(&written);
        let first = written.lines().zip(csv.lines()).position(|(a, b)| a != b);
        panic!(
            "exported CSV ({} bytes) differs from the imported one ({} bytes); first differing line {first:?}: {:?} vs {:?}",
            written.len(),
            csv.len(),
            first.and_then(|i| written.lines().nth(i)),
            first.and_then(|i| csv.lines().nth(i)),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_large_object_import_and_export_use_function_calls() {
    // FunctionCall names its function by OID only: refused unless a rule allows it.
    let guarded = Proxy::default().await;
    let file = common::write_file("lo-small.bin", "x");
    let refused = psql_as_alice(
        &guarded,
        &["-c", &format!("\\lo_import '{}'", path_str(&file))],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("guardrail.function-call"), "{stderr}");
    let proxy = Proxy::start(common::ProxyOptions {
        extra: r#"
[[policy.rules]]
id = "large-objects"
priority = 150
groups = ["dev"]
statements = ["function call"]
action = "allow"
"#
        .into(),
        ..Default::default()
    })
    .await;
    // 200 kB of every byte value, in a pseudo-random order: ~25 lowrite calls of 8 kB each.
    let mut content = Vec::with_capacity(200_000);
    let mut x: u32 = 0x1234_5678;
    for i in 0..200_000u32 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        content.push(if i < 256 { i as u8 } else { (x >> 24) as u8 });
    }
    let input = scratch_path("lo-in.bin");
    std::fs::write(&input, &content).expect("write lo input");
    let exported = scratch_path("lo-out.bin");
    let script = format!(
        "\\lo_import '{input}'\n\
         \\set lo :LASTOID\n\
         \\lo_export :lo '{exported}'\n\
         SELECT length(lo_get(:lo)), encode(lo_get(:lo), 'hex');\n\
         SELECT lo_unlink(:lo);\n",
        input = path_str(&input),
        exported = path_str(&exported),
    );
    let script_path = common::write_file("lo.sql", &script);
    let output = psql_as_alice(&proxy, &["-q", "-At", "-f", path_str(&script_path)], &[]).await;
    let text = success("psql large objects", &output);
    let mut lines = text.lines();
    let hex: String = content.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        lines.next(),
        Some(format!("200000|{hex}").as_str()),
        "lo_get differs from the imported file"
    );
    assert_eq!(lines.next(), Some("1"), "lo_unlink: {text}");
    let round_trip = std::fs::read(&exported).expect("read the exported large object");
    assert!(
        round_trip == content,
        "\\lo_export wrote {} bytes that differ from the import",
        round_trip.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_client_encoding_matches_a_direct_connection() {
    let proxy = Proxy::default().await;
    let h = harness();
    // 'café' with é as the single LATIN1 byte 0xE9 (invalid as UTF-8, so a conversion must happen).
    let mut sql: Vec<u8> = b"SHOW client_encoding;\nSHOW server_encoding;\n".to_vec();
    sql.extend_from_slice(
        b"SELECT length('caf\xe9'), 'caf\xe9', encode(convert_to('caf\xe9', 'UTF8'), 'hex');\n",
    );
    let script = scratch_path("latin1.sql");
    std::fs::write(&script, &sql).expect("write LATIN1 script");
    let args = ["-At", "-f", path_str(&script)];
    let latin1 = [("PGCLIENTENCODING", "LATIN1")];
    let through = psql_as_alice(&proxy, &args, &latin1).await;
    success("psql LATIN1 through pgwarden", &through);
    let expected: &[u8] = b"LATIN1\nUTF8\n4|caf\xe9|636166c3a9\n";
    assert_eq!(
        through.stdout,
        expected,
        "through pgwarden: {:?}",
        String::from_utf8_lossy(&through.stdout)
    );

    let port = h.pg.port().to_string();
    let direct_conninfo = format!(
        "host={} port={port} dbname=app user={} sslmode=disable",
        h.pg.host(),
        h.pg.superuser()
    );
    let mut direct_args = vec![
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        direct_conninfo.as_str(),
    ];
    direct_args.extend_from_slice(&args);
    let direct = common::run_tool(
        &common::psql_path(),
        &direct_args,
        &[
            ("PGPASSWORD", h.pg.superuser_password()),
            ("PGCLIENTENCODING", "LATIN1"),
        ],
    )
    .await;
    success("psql LATIN1 direct", &direct);
    assert_eq!(
        direct.stdout, through.stdout,
        "pgwarden changed the bytes of a LATIN1 session"
    );
}

/// Run pgbench as alice through `proxy` and return its stdout.
async fn pgbench(proxy: &Proxy, args: &[&str]) -> String {
    let port = proxy.port().to_string();
    let mut all = args.to_vec();
    all.extend_from_slice(&["-h", "127.0.0.1", "-p", port.as_str(), "-U", "alice", "app"]);
    let output = common::run_tool(
        &common::pgbench_path(),
        &all,
        &[("PGPASSWORD", ALICE_PASSWORD)],
    )
    .await;
    success(&format!("pgbench {}", args.join(" ")), &output)
}

/// The number after `prefix` on the first line that starts with it.
fn number_after(text: &str, prefix: &str) -> u64 {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in pgbench output:\n{text}"));
    let digits: String = line
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after `{prefix}`:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initializes_and_runs_in_every_query_mode() {
    // With masking on (a rule on a column the workload does not read, the detectors on),
    // and a short catalog refresh so the tables made through another pgwarden are seen.
    let proxy = Proxy::start(common::ProxyOptions {
        extra: "[masking]\ncatalog_refresh = \"1s\"\n\n\
                [[masking.rules]]\ntable = \"pgbench_accounts\"\ncolumn = \"filler\"\nstrategy = \"redact\"\n"
            .into(),
        ..Default::default()
    })
    .await;
    // `pgbench -i` starts with DROP TABLE: the default guardrails refuse it, by rule id…
    let port = proxy.port().to_string();
    let refused = common::run_tool(
        &common::pgbench_path(),
        &[
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "alice",
            "app",
        ],
        &[("PGPASSWORD", ALICE_PASSWORD)],
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("rule guardrail.drop"), "{stderr}");
    // …and a rule of higher priority lets alice set up pgbench's own tables.
    let setup = Proxy::start(common::ProxyOptions {
        extra: r#"
[[policy.rules]]
id = "bench-setup"
priority = 150
users = ["alice"]
statements = ["drop table", "truncate"]
tables = ["pgbench_*"]
action = "allow"
"#
        .into(),
        ..Default::default()
    })
    .await;
    pgbench(&setup, &["-i", "-s", "1", "-q"]).await;
    // The rule allows drops of pgbench's tables, not of a table named beside them.
    let beside = psql_as_alice(&setup, &["-c", "DROP TABLE pgbench_history, items"], &[]).await;
    let stderr = String::from_utf8_lossy(&beside.stderr);
    assert!(
        !beside.status.success() && stderr.contains("rule guardrail.drop"),
        "{stderr}"
    );
    // The benchmark itself runs under the default policy without a single refusal.
    let mut processed = 0;
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&proxy, &["-n", "-T", "5", "-c", "4", "-j", "2", "-M", mode]).await;
        assert!(out.contains(&format!("query mode: {mode}")), "{out}");
        assert_eq!(
            number_after(&out, "number of failed transactions:"),
            0,
            "{out}"
        );
        let n = number_after(&out, "number of transactions actually processed:");
        assert!(n > 0, "no transaction completed in {mode} mode:\n{out}");
        processed += n;
    }
    // Every TPC-B transaction inserted one history row and moved balances consistently: no
    // statement was lost, duplicated or misrouted on the way.
    let check = "SELECT (SELECT count(*) FROM pgbench_history), \
                 (SELECT sum(delta) FROM pgbench_history) = (SELECT sum(abalance) FROM pgbench_accounts) \
                 AND (SELECT sum(delta) FROM pgbench_history) = (SELECT sum(bbalance) FROM pgbench_branches) \
                 AND (SELECT sum(delta) FROM pgbench_history) = (SELECT sum(tbalance) FROM pgbench_tellers)";
    let text = success(
        "check pgbench tables",
        &psql_as_alice(&proxy, &["-At", "-c", check], &[]).await,
    );
    assert_eq!(text, format!("{processed}|t\n"));
    let filler = success(
        "read a masked column",
        &psql_as_alice(
            &proxy,
            &["-At", "-c", "SELECT filler FROM pgbench_accounts LIMIT 1"],
            &[],
        )
        .await,
    );
    assert_eq!(filler, "****\n", "the masking rule applied");
    // The other built-in scripts pass the default policy too (after the check: they move
    // balances without keeping tellers and branches in step).
    for (script, mode) in [("select-only", "simple"), ("simple-update", "extended")] {
        let out = pgbench(
            &proxy,
            &["-n", "-b", script, "-T", "2", "-c", "2", "-M", mode],
        )
        .await;
        assert_eq!(
            number_after(&out, "number of failed transactions:"),
            0,
            "{out}"
        );
        assert!(
            number_after(&out, "number of transactions actually processed:") > 0,
            "{script}:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_with_a_new_connection_per_transaction_leaves_no_sessions_behind() {
    let proxy = Proxy::default().await;
    // A custom script, so this test needs (and disturbs) no pgbench tables.
    let script = common::write_file("churn.sql", "SELECT 1;\n");
    let out = pgbench(
        &proxy,
        &[
            "-n",
            "-f",
            path_str(&script),
            "-C",
            "-T",
            "3",
            "-c",
            "4",
            "-j",
            "2",
        ],
    )
    .await;
    assert_eq!(
        number_after(&out, "number of failed transactions:"),
        0,
        "{out}"
    );
    let n = number_after(&out, "number of transactions actually processed:");
    assert!(n > 20, "only {n} connect-query-disconnect cycles:\n{out}");
    // Every session ended: the cancel keys are released and no upstream backend lingers.
    let server = proxy.server.as_ref().unwrap();
    let admin = common::direct("postgres").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let upstream: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if server.active_sessions() == 0 && upstream == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after pgbench -C: {} sessions still registered in pgwarden, {upstream} upstream backends",
            server.active_sessions()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_pipeline_mode_runs_through() {
    let proxy = Proxy::default().await;
    let script = common::write_file(
        "pipeline.sql",
        "\\set n random(1, 1000)\n\
         \\startpipeline\n\
         SELECT :n::int4 + 1;\n\
         SELECT repeat('x', :n);\n\
         SELECT count(*) FROM items WHERE id <= :n % 11;\n\
         \\endpipeline\n",
    );
    for mode in ["extended", "prepared"] {
        let out = pgbench(
            &proxy,
            &[
                "-n",
                "-f",
                path_str(&script),
                "-M",
                mode,
                "-T",
                "2",
                "-c",
                "2",
                "-j",
                "2",
            ],
        )
        .await;
        assert_eq!(
            number_after(&out, "number of failed transactions:"),
            0,
            "{out}"
        );
        assert!(
            number_after(&out, "number of transactions actually processed:") > 0,
            "{out}"
        );
    }
}

/// psql's Ctrl-C sends a CancelRequest (in plaintext, even on a TLS session) with the key
/// pgwarden issued; the statement must be cancelled and psql report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_ctrl_c_cancels_the_running_statement() {
    for (tls_mode, sslmode) in [("optional", "prefer"), ("required", "require")] {
        let proxy = Proxy::start(common::ProxyOptions {
            tls_mode: Some(tls_mode),
            ..Default::default()
        })
        .await;
        let marker = format!("SELECT pg_sleep(60) -- cancel {tls_mode}");
        let conninfo = format!("{} sslmode={sslmode}", alice_conninfo(&proxy));
        let mut cmd = tokio::process::Command::new(common::psql_path());
        cmd.args(["-X", "-d", conninfo.as_str(), "-c", marker.as_str()]);
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGSSLMODE",
            "PGOPTIONS",
            "PGSERVICE",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .env("PGPASSWORD", ALICE_PASSWORD)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn psql");
        let pid = child.id().expect("psql pid");

        let admin = common::direct("postgres").await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let row = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                    &[&marker],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{tls_mode}: the statement never started upstream"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let output =
            tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{tls_mode}: psql still waiting 10 s after Ctrl-C: the cancel did not work"
                    )
                })
                .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{tls_mode}: {stderr}");
        assert!(
            stderr.contains("canceling statement due to user request"),
            "{tls_mode}: {stderr}"
        );
    }
}

/// A statement PostgreSQL's parser rejects is refused by pgwarden before it runs, and psql
/// shows the same error as from the server itself: message, `LINE n:` and the caret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_syntax_errors_as_the_server_does() {
    let proxy = Proxy::default().await;
    let h = harness();
    let direct = format!(
        "host={} port={} dbname=app user={}",
        h.pg.host(),
        h.pg.port(),
        h.pg.superuser()
    );
    let error_lines = |output: &Output| -> Vec<String> {
        String::from_utf8_lossy(&output.stderr)
            .lines()
            // pgwarden adds a hint of its own.
            .filter(|l| !l.starts_with("HINT:"))
            .map(str::to_owned)
            .collect()
    };
    for sql in [
        "SELECT id\nFROM items\nWHERE id > 1 and and id < 3",
        "SELECT 'unterminated;",
        "SELEC 1",
        "SELECT (1",
        "SELECT 1;\nSELECT 2 FROM items WHERE AND;\nSELECT 3",
        "SELECT 'é' AS word, 1 +* 2",
    ] {
        let through = psql_as_alice(&proxy, &["-c", sql], &[]).await;
        let straight = common::run_tool(
            &common::psql_path(),
            &["-X", "-d", &direct, "-c", sql],
            &[("PGPASSWORD", h.pg.superuser_password())],
        )
        .await;
        let (through, straight) = (error_lines(&through), error_lines(&straight));
        assert!(
            straight.iter().any(|l| l.starts_with("LINE ")),
            "the server shows a position for {sql:?}: {straight:?}"
        );
        assert_eq!(through, straight, "{sql:?}");
    }
}
