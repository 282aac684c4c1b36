//! `decide()` tables: statements through the real analyzer, decided for a subject.

use super::*;
use crate::sql::Analyzer;

fn subject<'a>(user: &'a str, groups: &'a [String]) -> Subject<'a> {
    Subject {
        user,
        groups,
        database: "app",
        role: "app_rw",
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
            Some("guardrail.dangerous-functions"),
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
}
