//! `decide()` tables: statements through the real analyzer, decided for a subject.

use super::*;
use crate::sql::Analyzer;

fn subject<'a>(user: &'a str, groups: &'a [String]) -> Subject<'a> {
    Subject {
        user,
        groups,
        database: "app",
        role: "app_rw",
        search_path: &[],
        has_intent: false,
        own_backends: &[],
    }
}

fn spec(id: &str, action: Action) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        action,
        ..RuleSpec::default()
    }
}

fn decide(policy: &Policy, analyzer: &Analyzer, groups: &[String], sql: &str) -> Decision {
    let analysis = analyzer.analyze(sql.as_bytes()).unwrap();
    policy.decide(&subject("alice", groups), &analysis.statements)
}

#[test]
fn guardrails_by_default() {
    let policy = Policy::default();
    let analyzer = Analyzer::new(64);
    let dev = ["dev".to_owned()];
    let cases: &[(&str, Action, Option<&str>)] = &[
        ("SELECT * FROM users", Action::Allow, None),
        ("UPDATE users SET a = 1 WHERE id = 1", Action::Allow, None),
        ("INSERT INTO t VALUES (1)", Action::Allow, None),
        ("DROP TABLE users", Action::Deny, Some("guardrail.drop")),
        (
            "drop schema s cascade",
            Action::Deny,
            Some("guardrail.drop"),
        ),
        ("DROP DATABASE app", Action::Deny, Some("guardrail.drop")),
        ("DROP INDEX i", Action::Allow, None),
        ("TRUNCATE t", Action::Deny, Some("guardrail.truncate")),
        // The session's own temporary tables, named as such.
        ("DROP TABLE pg_temp.t", Action::Allow, None),
        ("TRUNCATE pg_temp.a, PG_TEMP.b", Action::Allow, None),
        ("DROP TABLE pg_temp.t, t", Action::Deny, Some("guardrail.drop")),
        ("DROP TABLE \"PG_TEMP\".t", Action::Deny, Some("guardrail.drop")),
        // One unqualified name with a dot in it: search_path decides where it is.
        ("DROP TABLE \"pg_temp.t\"", Action::Deny, Some("guardrail.drop")),
        ("TRUNCATE \"pg_temp.t\"", Action::Deny, Some("guardrail.truncate")),
        ("DROP SCHEMA pg_temp", Action::Deny, Some("guardrail.drop")),
        (
            "DROP TABLE pg_temp.t CASCADE",
            Action::Deny,
            Some("guardrail.drop-cascade"),
        ),
        ("DELETE FROM t", Action::Deny, Some("guardrail.no-where")),
        (
            "UPDATE t SET a = 1",
            Action::Deny,
            Some("guardrail.no-where"),
        ),
        (
            "WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d",
            Action::Deny,
            Some("guardrail.no-where"),
        ),
        (
            "EXPLAIN ANALYZE DELETE FROM t",
            Action::Deny,
            Some("guardrail.no-where"),
        ),
        (
            "ALTER SYSTEM SET work_mem = '1GB'",
            Action::Deny,
            Some("guardrail.alter-system"),
        ),
        (
            "COPY t FROM PROGRAM 'id'",
            Action::Deny,
            Some("guardrail.server-files"),
        ),
        (
            "COPY t TO '/tmp/x'",
            Action::Deny,
            Some("guardrail.server-files"),
        ),
        ("COPY t FROM STDIN", Action::Allow, None),
        (
            "SELECT pg_read_file('/etc/passwd')",
            Action::Deny,
            Some("guardrail.dangerous-functions"),
        ),
        (
            "SELECT ARRAY[pg_catalog.pg_ls_dir('.')]",
            Action::Deny,
            Some("guardrail.dangerous-functions"),
        ),
        (
            "SELECT pg_ls_waldir()",
            Action::Deny,
            Some("guardrail.dangerous-functions"),
        ),
        (
            "SELECT * FROM dblink_connect('x')",
            Action::Deny,
            Some("guardrail.dangerous-functions"),
        ),
        (
            "SELECT lo_export(1, '/tmp/x')",
            Action::Deny,
            Some("guardrail.dangerous-functions"),
        ),
        (
            "SELECT pg_terminate_backend(42)",
            Action::Deny,
            Some("guardrail.other-sessions"),
        ),
        (
            "SELECT query_to_xml('SELECT pg_terminate_backend(pid) FROM pg_stat_activity', false, false, '')",
            Action::Deny,
            Some("guardrail.sql-text-functions"),
        ),
        (
            "SELECT pg_catalog.table_to_xml('customers', true, false, '')",
            Action::Deny,
            Some("guardrail.sql-text-functions"),
        ),
        (
            "SELECT * FROM ts_stat('SELECT to_tsvector(email) FROM customers')",
            Action::Deny,
            Some("guardrail.sql-text-functions"),
        ),
        (
            "CREATE OPERATOR pg_temp.### (FUNCTION = pg_terminate_backend, RIGHTARG = int)",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "CREATE CAST (int AS text) WITH FUNCTION f(int)",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "CREATE AGGREGATE agg (int) (SFUNC = f, STYPE = int)",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity",
            Action::Deny,
            Some("guardrail.other-sessions"),
        ),
        (
            "DO $$ BEGIN END $$",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "GRANT SELECT ON t TO bob",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "DROP OWNED BY CURRENT_USER CASCADE",
            Action::Deny,
            Some("guardrail.drop"),
        ),
        (
            "CREATE SCHEMA s GRANT ALL ON TABLE public.payroll TO PUBLIC",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER GROUP app_admin ADD USER bob",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "CREATE ROLE x IN ROLE app_admin",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "REASSIGN OWNED BY app_rw TO bob",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "CREATE EXTENSION tablefunc",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "DROP TYPE row_type CASCADE",
            Action::Deny,
            Some("guardrail.drop-cascade"),
        ),
        ("DROP TYPE row_type", Action::Allow, None),
        // Statements that alter a function, trigger, rule, owner or row-level security
        // without saying ALTER FUNCTION / CREATE TRIGGER.
        (
            "ALTER FUNCTION f() RENAME TO g",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER ROUTINE f() SET SCHEMA s",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER TABLE orders DISABLE TRIGGER audit_orders",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER TABLE orders ADD COLUMN note text, DISABLE RULE keep_history",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "DROP TRIGGER audit_orders ON orders",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER TABLE orders OWNER TO somebody",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER TABLE orders NO FORCE ROW LEVEL SECURITY",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "CREATE POLICY everyone ON orders USING (true)",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER EXTENSION hstore UPDATE",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "ALTER OPERATOR = (int, int) SET (RESTRICT = f)",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        ("ALTER TABLE orders ADD COLUMN note text", Action::Allow, None),
        ("ALTER TABLE orders RENAME TO old_orders", Action::Allow, None),
        // LOAD runs a shared library's code in the server process.
        (
            "LOAD 'auto_explain'",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        (
            "CREATE FOREIGN TABLE f (a text) SERVER files OPTIONS (program 'id')",
            Action::Approve,
            Some("guardrail.other-servers"),
        ),
        (
            "IMPORT FOREIGN SCHEMA public FROM SERVER other INTO mine",
            Action::Approve,
            Some("guardrail.other-servers"),
        ),
        (
            "SELECT * FROM crosstab('SELECT a, b, c FROM payroll.salaries') AS t(a text, b int)",
            Action::Deny,
            Some("guardrail.sql-text-functions"),
        ),
        (
            "SELECT * FROM connectby('payroll.salaries', 'id', 'boss', '1', 0) AS t(id int, boss int, level int)",
            Action::Deny,
            Some("guardrail.sql-text-functions"),
        ),
        (
            "SELECT data FROM pg_logical_slot_get_changes('s', NULL, NULL)",
            Action::Deny,
            Some("guardrail.dangerous-functions"),
        ),
        (
            "SELECT pg_file_write('/tmp/x', 'y', false)",
            Action::Deny,
            Some("guardrail.dangerous-functions"),
        ),
        // The strictest statement of a message decides it.
        (
            "SELECT 1; DROP TABLE t; DO $$ BEGIN END $$",
            Action::Deny,
            Some("guardrail.drop"),
        ),
        (
            "SELECT 1; GRANT SELECT ON t TO bob",
            Action::Approve,
            Some("guardrail.code-and-privileges"),
        ),
        ("", Action::Allow, None),
    ];
    for (sql, action, rule) in cases {
        let d = decide(&policy, &analyzer, &dev, sql);
        assert_eq!((d.action, d.rule.as_deref()), (*action, *rule), "{sql}");
    }
    let d = decide(&policy, &analyzer, &dev, "SELECT 1; SELECT 2; DROP TABLE t");
    assert_eq!(d.statement, 2);
    assert!(d.message.unwrap().contains("dropping tables"));
}

#[test]
fn signalling_is_allowed_for_your_own_sessions_only() {
    let policy = Policy::default();
    let analyzer = Analyzer::new(64);
    let groups = ["dev".to_owned()];
    let decide_with = |own: &[i32], sql: &str| {
        let analysis = analyzer.analyze(sql.as_bytes()).unwrap();
        let mut who = subject("alice", &groups);
        who.own_backends = own;
        policy.decide(&who, &analysis.statements)
    };
    let own = [4242, 77];
    assert_eq!(
        decide_with(&own, "SELECT pg_cancel_backend(4242)").action,
        Action::Allow
    );
    assert_eq!(
        decide_with(
            &own,
            "SELECT pg_terminate_backend(77), pg_cancel_backend(4242)"
        )
        .action,
        Action::Allow
    );
    for refused in [
        "SELECT pg_cancel_backend(4243)",
        "SELECT pg_terminate_backend(77), pg_terminate_backend(1)",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = 77",
        "SELECT pg_cancel_backend($1)",
    ] {
        let decision = decide_with(&own, refused);
        assert_eq!(decision.action, Action::Deny, "{refused}");
        assert_eq!(decision.rule.as_deref(), Some("guardrail.other-sessions"));
    }
    // A rule may use the flag too, and one above the guardrails lets a group through.
    let mut dba = spec("dba-signals", Action::Allow);
    dba.priority = 150;
    dba.groups = vec!["dba".into()];
    dba.flags = vec!["signals_other_sessions".into()];
    let policy = Policy::new(vec![dba], Action::Allow, Action::Deny, true, &[]).unwrap();
    let analysis = analyzer.analyze(b"SELECT pg_terminate_backend(1)").unwrap();
    let dbas = ["dba".to_owned()];
    assert_eq!(
        policy
            .decide(&subject("dora", &dbas), &analysis.statements)
            .rule
            .as_deref(),
        Some("dba-signals")
    );
}

#[test]
fn rules_match_on_who_and_what_in_priority_then_written_order() {
    let analyzer = Analyzer::new(64);
    let rules = vec![
        RuleSpec {
            groups: vec!["dba".into()],
            priority: 200,
            statements: vec!["drop".into()],
            ..spec("dba-may-drop", Action::Allow)
        },
        RuleSpec {
            tables: vec!["payroll.*".into()],
            message: Some("payroll is off limits".into()),
            ..spec("no-payroll", Action::Deny)
        },
        RuleSpec {
            tables: vec!["payroll.salaries".into()],
            ..spec("never-reached", Action::Allow)
        },
        RuleSpec {
            users: vec!["bob".into()],
            statements: vec!["select".into()],
            ..spec("bob-reads-only", Action::Allow)
        },
        RuleSpec {
            users: vec!["bob".into()],
            ..spec("bob-nothing-else", Action::Deny)
        },
        RuleSpec {
            functions: vec!["pg_sleep".into()],
            databases: vec!["app".into()],
            ..spec("no-sleeping", Action::Deny)
        },
        RuleSpec {
            statements: vec!["delete".into()],
            tables: vec!["orders".into()],
            ..spec("orders-deletes-wait", Action::Approve)
        },
    ];
    let policy = Policy::new(rules, Action::Allow, Action::Deny, true, &[]).unwrap();
    let dba = ["dba".to_owned()];
    let dev = ["dev".to_owned()];
    let check = |user: &str, groups: &[String], sql: &str, action: Action, rule: Option<&str>| {
        let analysis = analyzer.analyze(sql.as_bytes()).unwrap();
        let d = policy.decide(&subject(user, groups), &analysis.statements);
        assert_eq!(
            (d.action, d.rule.as_deref()),
            (action, rule),
            "{user}: {sql}"
        );
    };
    check(
        "alice",
        &dba,
        "DROP TABLE t",
        Action::Allow,
        Some("dba-may-drop"),
    );
    // An allow rule lets a statement through only if it names all of it: bob's select
    // with a DELETE inside is not "reads only".
    check(
        "bob",
        &dev,
        "SELECT * FROM t",
        Action::Allow,
        Some("bob-reads-only"),
    );
    check(
        "bob",
        &dev,
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        Action::Deny,
        Some("bob-nothing-else"),
    );
    check(
        "alice",
        &dev,
        "DROP TABLE t",
        Action::Deny,
        Some("guardrail.drop"),
    );
    check(
        "alice",
        &dev,
        "SELECT * FROM payroll.salaries",
        Action::Deny,
        Some("no-payroll"),
    );
    check(
        "bob",
        &dev,
        "SELECT 1",
        Action::Allow,
        Some("bob-reads-only"),
    );
    check(
        "bob",
        &dev,
        "INSERT INTO t VALUES (1)",
        Action::Deny,
        Some("bob-nothing-else"),
    );
    check(
        "alice",
        &dev,
        "SELECT pg_sleep(1)",
        Action::Deny,
        Some("no-sleeping"),
    );
    check(
        "alice",
        &dev,
        "DELETE FROM public.orders WHERE id = 1",
        Action::Approve,
        Some("orders-deletes-wait"),
    );
    check(
        "alice",
        &dev,
        "DELETE FROM other WHERE id = 1",
        Action::Allow,
        None,
    );
}

#[test]
fn guardrails_can_be_exempted_or_switched_off_and_the_default_applies() {
    let analyzer = Analyzer::new(16);
    let dba = ["dba".to_owned()];
    let exempt = Policy::new(Vec::new(), Action::Deny, Action::Deny, true, &dba).unwrap();
    let d = decide(&exempt, &analyzer, &dba, "DROP TABLE t");
    assert_eq!(
        (d.action, d.rule),
        (Action::Deny, None),
        "the default, not the guardrail"
    );
    let off = Policy::new(Vec::new(), Action::Allow, Action::Deny, false, &[]).unwrap();
    assert_eq!(
        decide(&off, &analyzer, &dba, "TRUNCATE t").action,
        Action::Allow
    );
}

#[test]
fn bad_rules_are_rejected_with_their_place() {
    let unknown_flag = RuleSpec {
        flags: vec!["no_were".into()],
        ..spec("x", Action::Deny)
    };
    let err = Policy::new(vec![unknown_flag], Action::Allow, Action::Deny, true, &[]).unwrap_err();
    assert_eq!((err.rule, err.key), (0, "flags"));
    let twice = vec![spec("a", Action::Allow), spec("a", Action::Deny)];
    let err = Policy::new(twice, Action::Allow, Action::Deny, true, &[]).unwrap_err();
    assert_eq!((err.rule, err.key), (1, "id"));
    let reserved = spec("guardrail.mine", Action::Allow);
    assert!(Policy::new(vec![reserved], Action::Allow, Action::Deny, true, &[]).is_err());
    // A misspelt kind would never match: a deny rule with one would deny nothing.
    for typo in ["delet", "drop tabel", "dropp", "alter"] {
        let rule = RuleSpec {
            statements: vec!["select".into(), typo.into()],
            ..spec("x", Action::Deny)
        };
        let result = Policy::new(vec![rule], Action::Allow, Action::Deny, true, &[]);
        if typo == "alter" {
            assert!(result.is_ok(), "`alter` is the first word of kinds");
            continue;
        }
        let err = result.unwrap_err();
        assert_eq!((err.rule, err.key), (0, "statements"), "{typo}");
        assert!(err.message.contains(typo), "{}", err.message);
    }
    // Kinds are matched without regard to case and spacing, as they are when deciding.
    let spaced = RuleSpec {
        statements: vec!["  DROP   Table ".into(), "function call".into()],
        ..spec("x", Action::Deny)
    };
    assert!(Policy::new(vec![spaced], Action::Allow, Action::Deny, true, &[]).is_ok());
}

#[test]
fn globs() {
    let g = |p: &str| Glob::new(p).unwrap();
    assert!(g("users").matches_name("users"));
    assert!(g("users").matches_name("public.users"));
    assert!(g("USERS").matches_name("Users"));
    assert!(g("public.users").matches_name("users"));
    assert!(!g("app.users").matches_name("public.users"));
    assert!(g("pay*").matches_name("payroll.salaries"));
    assert!(g("*.salaries").matches_name("payroll.salaries"));
    assert!(g("dblink*").matches_name("dblink_exec"));
    assert!(g("pg_ls_*dir").matches_name("pg_ls_waldir"));
    assert!(g("a?c").matches_name("abc"));
    assert!(!g("a?c").matches_name("abbc"));
    assert!(Glob::new("").is_err());
    let path = ["app".to_owned(), "public".to_owned()];
    assert!(g("app.users").matches_name_in("users", &path));
    assert!(g("public.users").matches_name_in("users", &path));
    assert!(!g("payroll.users").matches_name_in("users", &path));
    assert!(g("payroll.users").matches_name_in("users", &["*".to_owned()]));
    assert!(!g("app.users").matches_name_in("app2.users", &path));
}

/// What psql's meta-commands, drivers and ORMs send while introspecting or setting up a
/// session: none of it may be refused by the default policy.
const INTROSPECTION: &[&str] = &[
    // psql \dt, \d NAME, \du, \l, \df, \dn
    "SELECT n.nspname as \"Schema\", c.relname as \"Name\", CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as \"Type\", pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\" FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam WHERE c.relkind IN ('r','p','') AND n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_toast' AND n.nspname <> 'information_schema' AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2;",
    "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(items)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;",
    "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef), a.attnotnull, (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation, a.attidentity, a.attgenerated FROM pg_catalog.pg_attribute a WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum;",
    "SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolconnlimit, r.rolvaliduntil, ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid) as memberof, r.rolreplication, r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY 1;",
    "SELECT d.datname as \"Name\", pg_catalog.pg_get_userbyid(d.datdba) as \"Owner\", pg_catalog.pg_encoding_to_char(d.encoding) as \"Encoding\", d.datcollate as \"Collate\", d.datctype as \"Ctype\", pg_catalog.array_to_string(d.datacl, E'\\n') AS \"Access privileges\" FROM pg_catalog.pg_database d ORDER BY 1;",
    "SELECT n.nspname as \"Schema\", p.proname as \"Name\", pg_catalog.pg_get_function_result(p.oid) as \"Result data type\", pg_catalog.pg_get_function_arguments(p.oid) as \"Argument data types\", CASE p.prokind WHEN 'a' THEN 'agg' WHEN 'w' THEN 'window' WHEN 'p' THEN 'proc' ELSE 'func' END as \"Type\" FROM pg_catalog.pg_proc p LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE pg_catalog.pg_function_is_visible(p.oid) AND n.nspname <> 'pg_catalog' AND n.nspname <> 'information_schema' ORDER BY 1, 2, 4;",
    "SELECT n.nspname AS \"Name\", pg_catalog.pg_get_userbyid(n.nspowner) AS \"Owner\" FROM pg_catalog.pg_namespace n WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' ORDER BY 1;",
    "SELECT pg_catalog.pg_size_pretty(pg_catalog.pg_table_size(c.oid)) FROM pg_catalog.pg_class c WHERE c.oid = 16384",
    // Drivers setting up a session.
    "SET extra_float_digits = 3",
    "SET application_name = 'PostgreSQL JDBC Driver'",
    "SET DateStyle = 'ISO'",
    "SET client_encoding TO 'UTF8'",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "SELECT version()",
    "select current_schema()",
    "SELECT pg_catalog.current_setting('server_version_num')",
    "SELECT oid, typname FROM pg_type WHERE typname IN ('hstore', 'geometry')",
    "select nextval ('hibernate_sequence')",
    "SELECT 1 FROM pg_catalog.pg_settings WHERE name = 'standard_conforming_strings'",
    "BEGIN ISOLATION LEVEL READ COMMITTED",
    "SAVEPOINT sa_savepoint_1",
    "RELEASE SAVEPOINT sa_savepoint_1",
    "DISCARD ALL",
    "DEALLOCATE ALL",
    "LISTEN jobs",
    // ORM reflection (SQLAlchemy, Django, Rails, JDBC metadata).
    "SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace WHERE pg_catalog.pg_class.relkind = ANY (ARRAY[$1, $2, $3]) AND pg_catalog.pg_class.relpersistence != $4 AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid) AND pg_catalog.pg_namespace.nspname != $5",
    "SELECT c.relname, CASE WHEN c.relispartition THEN 'p' WHEN c.relkind IN ('m', 'v') THEN 'v' ELSE 't' END, obj_description(c.oid, 'pg_class') FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v') AND n.nspname NOT IN ('pg_catalog', 'pg_toast') AND pg_catalog.pg_table_is_visible(c.oid)",
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.atttypid, a.atttypmod, c.collname, col_description(a.attrelid, a.attnum) AS comment FROM pg_attribute a LEFT JOIN pg_attrdef d ON a.attrelid = d.adrelid AND a.attnum = d.adnum LEFT JOIN pg_type t ON a.atttypid = t.oid LEFT JOIN pg_collation c ON a.attcollation = c.oid AND a.attcollation <> t.typcollation WHERE a.attrelid = '\"users\"'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
    "SELECT kcu.column_name, ccu.table_name AS foreign_table_name FROM information_schema.table_constraints AS tc JOIN information_schema.key_column_usage AS kcu ON tc.constraint_name = kcu.constraint_name JOIN information_schema.constraint_column_usage AS ccu ON ccu.constraint_name = tc.constraint_name WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_name = $1",
    "SELECT NULL AS TABLE_CAT, n.nspname AS TABLE_SCHEM, c.relname AS TABLE_NAME FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p') ORDER BY TABLE_SCHEM, TABLE_NAME",
    "SELECT \"django_migrations\".\"app\", \"django_migrations\".\"name\" FROM \"django_migrations\"",
    "INSERT INTO \"django_migrations\" (\"app\", \"name\", \"applied\") VALUES ($1, $2, $3) RETURNING \"django_migrations\".\"id\"",
    "CREATE TABLE IF NOT EXISTS \"schema_migrations\" (\"version\" character varying NOT NULL PRIMARY KEY)",
    "ALTER TABLE \"orders\" ADD CONSTRAINT \"orders_customer_fk\" FOREIGN KEY (\"customer_id\") REFERENCES \"customers\" (\"id\") DEFERRABLE INITIALLY DEFERRED",
    "CREATE INDEX \"orders_customer_id_idx\" ON \"orders\" (\"customer_id\")",
    "UPDATE \"users\" SET \"last_login\" = $1 WHERE \"users\".\"id\" = $2",
    "DELETE FROM \"sessions\" WHERE \"sessions\".\"expire_date\" < $1",
    "SELECT COUNT(*) AS \"__count\" FROM \"orders\" WHERE \"orders\".\"status\" = $1",
    // pgbench's built-in scripts.
    "UPDATE pgbench_accounts SET abalance = abalance + -3 WHERE aid = 7;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -3 WHERE tid = 2;",
    "UPDATE pgbench_branches SET bbalance = bbalance + -3 WHERE bid = 1;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (2, 1, 7, -3, CURRENT_TIMESTAMP);",
    "END;",
];

#[test]
fn introspection_and_everyday_traffic_pass_the_default_policy() {
    let policy = Policy::default();
    let analyzer = Analyzer::new(256);
    let dev = ["dev".to_owned()];
    for sql in INTROSPECTION {
        let d = decide(&policy, &analyzer, &dev, sql);
        assert_eq!(d.action, Action::Allow, "{sql}: {d:?}");
    }
    assert!(INTROSPECTION.len() >= 40);
}

#[test]
fn an_allow_rule_covers_only_the_tables_and_functions_it_names() {
    let analyzer = Analyzer::new(64);
    let rules = vec![
        RuleSpec {
            priority: 150,
            statements: vec!["drop table".into(), "truncate".into()],
            tables: vec!["pgbench_*".into()],
            ..spec("bench-setup", Action::Allow)
        },
        RuleSpec {
            priority: 150,
            functions: vec!["pg_terminate_backend".into()],
            ..spec("may-terminate", Action::Allow)
        },
        // Requiring an intent restricts: any DELETE in the statement brings the rule in.
        RuleSpec {
            statements: vec!["delete".into()],
            require_intent: true,
            ..spec("deletes-need-a-ticket", Action::Allow)
        },
        RuleSpec {
            priority: 150,
            statements: vec!["truncate".into()],
            tables: vec!["staging_*".into()],
            require_intent: true,
            ..spec("staging-truncates-with-a-ticket", Action::Allow)
        },
    ];
    let policy = Policy::new(rules, Action::Allow, Action::Deny, true, &[]).unwrap();
    let dev = ["dev".to_owned()];
    let cases: &[(&str, Action, Option<&str>)] = &[
        (
            "DROP TABLE IF EXISTS pgbench_accounts, pgbench_history",
            Action::Allow,
            Some("bench-setup"),
        ),
        (
            "TRUNCATE pgbench_history",
            Action::Allow,
            Some("bench-setup"),
        ),
        (
            "DROP TABLE pgbench_accounts, customers",
            Action::Deny,
            Some("guardrail.drop"),
        ),
        (
            "TRUNCATE customers, pgbench_history",
            Action::Deny,
            Some("guardrail.truncate"),
        ),
        (
            "SELECT pg_terminate_backend(4711)",
            Action::Allow,
            Some("may-terminate"),
        ),
        (
            "SELECT pg_terminate_backend(4711), pg_read_file('/etc/passwd')",
            Action::Deny,
            Some("guardrail.dangerous-functions"),
        ),
        (
            "WITH old AS (SELECT 1 AS id) DELETE FROM t USING old WHERE t.id = old.id",
            Action::Deny,
            Some("deletes-need-a-ticket"),
        ),
    ];
    for (sql, action, rule) in cases {
        let d = decide(&policy, &analyzer, &dev, sql);
        assert_eq!((d.action, d.rule.as_deref()), (*action, *rule), "{sql}");
    }
    // With an intent declared, a rule that requires one allows only what it names.
    let mut declared = subject("alice", &dev);
    declared.has_intent = true;
    let with_intent = |sql: &str| {
        let analysis = analyzer.analyze(sql.as_bytes()).unwrap();
        let d = policy.decide(&declared, &analysis.statements);
        (d.action, d.rule)
    };
    assert_eq!(
        with_intent("TRUNCATE staging_orders"),
        (
            Action::Allow,
            Some("staging-truncates-with-a-ticket".into())
        )
    );
    assert_eq!(
        with_intent("TRUNCATE staging_orders, customers"),
        (Action::Deny, Some("guardrail.truncate".into()))
    );
    assert_eq!(
        decide(
            &policy,
            &analyzer,
            &dev,
            "TRUNCATE staging_orders, customers"
        )
        .rule,
        Some("staging-truncates-with-a-ticket".into()),
        "without an intent, the rule asks for one"
    );
}
