//! The built-in guardrails: on by default (`[policy] guardrails = true`), evaluated before
//! rules of lower priority, so an ordinary allow rule cannot switch them off by accident.
//! To override one for some people, write a rule with a priority above
//! [`GUARDRAIL_PRIORITY`], or exempt their groups (`[policy] guardrail_exempt_groups`).

use super::rule::{Rule, RuleSpec};
use super::Action;

/// Guardrails are tried at this priority (user rules default to 0).
pub const GUARDRAIL_PRIORITY: i32 = 100;

/// Functions that read or write the server's files, reach other servers, or act on the
/// server itself. (Signalling other sessions is `guardrail.other-sessions`.)
const DANGEROUS_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_*dir",
    "lo_import",
    "lo_export",
    "dblink*",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    // adminpack (PostgreSQL 16 and older): writes and removes server files.
    "pg_file_write",
    "pg_file_sync",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_logdir_ls",
    // Replication slots: logical decoding reads every table's changes.
    "pg_logical_slot_*",
    "pg_create_*_replication_slot",
    "pg_copy_*_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
];

/// Functions that run SQL given as text, or read a table, schema, database or cursor named
/// in a string: the gate never sees that SQL, and masking never sees those columns.
const SQL_TEXT_FUNCTIONS: &[&str] = &[
    "query_to_xml*",
    "query_to_xmlschema",
    "table_to_xml*",
    "schema_to_xml*",
    "database_to_xml*",
    "cursor_to_xml*",
    "ts_stat",
    "ts_rewrite",
    // tablefunc, xml2 (trusted extensions a database owner may install).
    "crosstab*",
    "connectby",
    "xpath_table",
];

struct Guardrail {
    id: &'static str,
    statements: &'static [&'static str],
    functions: &'static [&'static str],
    flags: &'static [&'static str],
    action: Action,
    message: &'static str,
    /// Does not apply when every table the statement names is qualified with `pg_temp`,
    /// the session's own temporary schema: what is there lives and dies with the session.
    spares_temporary_tables: bool,
}

const PACK: &[Guardrail] = &[
    Guardrail {
        id: "guardrail.drop",
        statements: &[
            "drop table",
            "drop schema",
            "drop database",
            "drop materialized view",
            "drop owned",
        ],
        functions: &[],
        flags: &[],
        action: Action::Deny,
        message: "dropping tables, schemas, databases or everything a role owns is not allowed through pgwarden (a temporary table of this session may be dropped as pg_temp.<name>)",
        spares_temporary_tables: true,
    },
    Guardrail {
        id: "guardrail.drop-cascade",
        statements: &[],
        functions: &[],
        flags: &["drop_cascade"],
        action: Action::Deny,
        message: "DROP … CASCADE also drops whatever depends on the object, tables and columns included; drop the dependent objects by name, or ask for a rule",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.truncate",
        statements: &["truncate"],
        functions: &[],
        flags: &[],
        action: Action::Deny,
        message: "TRUNCATE is not allowed through pgwarden (a temporary table of this session may be truncated as pg_temp.<name>)",
        spares_temporary_tables: true,
    },
    Guardrail {
        id: "guardrail.no-where",
        statements: &[],
        functions: &[],
        flags: &["no_where"],
        action: Action::Deny,
        message: "UPDATE or DELETE without a WHERE clause would change every row; add a WHERE clause naming the rows (to change every row on purpose, say so: WHERE true)",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.alter-system",
        statements: &["alter system"],
        functions: &[],
        flags: &[],
        action: Action::Deny,
        message: "ALTER SYSTEM is not allowed through pgwarden",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.server-files",
        statements: &[],
        functions: &[],
        flags: &["copy_program", "copy_file"],
        action: Action::Deny,
        message: "COPY to or from a program or a file on the database server is not allowed; use COPY … FROM STDIN / TO STDOUT (psql: \\copy)",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.dangerous-functions",
        statements: &[],
        functions: DANGEROUS_FUNCTIONS,
        flags: &[],
        action: Action::Deny,
        message: "this function reaches the server's files or other servers, or acts on the server itself, and is not allowed through pgwarden",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.other-sessions",
        statements: &[],
        functions: &[],
        flags: &["signals_other_sessions"],
        action: Action::Deny,
        message: "pg_cancel_backend and pg_terminate_backend may signal only your own sessions through pgwarden; give the process id as a number (SELECT pg_backend_pid() in that session)",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.sql-text-functions",
        statements: &[],
        functions: SQL_TEXT_FUNCTIONS,
        flags: &[],
        action: Action::Deny,
        message: "this function runs a query, or reads a table or cursor, named in a string, which pgwarden cannot check or mask; run the query itself",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.function-call",
        statements: &[crate::sql::facts::FUNCTION_CALL],
        functions: &[],
        flags: &[],
        action: Action::Deny,
        message: "the fast-path FunctionCall message (used by large-object calls such as psql's \\lo_import and \\lo_export) names a function only by OID, so pgwarden cannot check it; a rule must allow it (statements = [\"function call\"])",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.code-and-privileges",
        statements: &[
            "do",
            "create function",
            "create procedure",
            "alter function",
            // Triggers and rules run code on other people's statements: adding, changing,
            // switching off (ALTER TABLE … DISABLE TRIGGER) or dropping one changes what runs.
            "create rule",
            "alter rule",
            "drop rule",
            "create trigger",
            "alter trigger",
            "drop trigger",
            "create event trigger",
            "alter event trigger",
            "drop event trigger",
            // Objects that call functions with no call in the statements that use them.
            "create operator",
            "alter operator",
            "create cast",
            "create aggregate",
            "create conversion",
            "create transform",
            "create access method",
            "create language",
            "grant",
            "revoke",
            // Ownership carries every privilege on the object.
            "alter owner",
            // Row-level security decides which rows each role sees.
            "create policy",
            "alter policy",
            "drop policy",
            "alter row level security",
            "security label",
            "create role",
            "alter role",
            "drop role",
            "reassign owned",
            "alter default privileges",
            "create extension",
            "alter extension",
            // Runs a shared library's code in the server process.
            "load",
        ],
        functions: &[],
        flags: &[],
        action: Action::Approve,
        message: "code and privilege changes need approval",
        spares_temporary_tables: false,
    },
    Guardrail {
        id: "guardrail.other-servers",
        statements: &[
            "create foreign table",
            "create server",
            "create foreign data wrapper",
            "create user mapping",
            "import foreign schema",
            "create subscription",
            "create publication",
        ],
        functions: &[],
        flags: &[],
        action: Action::Approve,
        message: "a way to read or write data outside this database (foreign tables and servers, replication) needs approval",
        spares_temporary_tables: false,
    },
];

/// The guardrail rules, skipping people in `exempt_groups`.
pub fn guardrails(exempt_groups: &[String]) -> Vec<Rule> {
    let list = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    PACK.iter()
        .enumerate()
        .filter_map(|(index, g)| {
            let spec = RuleSpec {
                id: g.id.to_owned(),
                priority: GUARDRAIL_PRIORITY,
                statements: list(g.statements),
                functions: list(g.functions),
                flags: list(g.flags),
                action: g.action,
                message: Some(g.message.to_owned()),
                ..RuleSpec::default()
            };
            // The pack is static and covered by tests; a bad entry would be dropped, not
            // crash the proxy.
            let mut rule = Rule::compile_any(spec, index).ok()?;
            rule.who.exempt_groups = exempt_groups.to_vec();
            rule.spares_temporary_tables = g.spares_temporary_tables;
            Some(rule)
        })
        .collect()
}
