//! The `pgwarden` command line.

#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use pgwarden::config::Config;

/// Exit status for an invalid configuration (EX_USAGE, as linkerd2-proxy does).
const EXIT_CONFIG: u8 = 64;

/// pgwarden: an identity-aware PostgreSQL proxy.
///
/// Clients (psql, drivers, ORMs) connect to pgwarden as if it were PostgreSQL. pgwarden
/// authenticates them, logs in to the real server with credentials only it holds, and relays
/// every statement through one decision point.
#[derive(Debug, Parser)]
#[command(version = pgwarden::VERSION, about, long_about, propagate_version = true)]
struct Cli {
    /// Log format: human-readable lines, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "PGWARDEN_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    ///
    /// Loads and validates the config before binding any socket (exit 64 if invalid).
    /// SIGTERM: stop accepting, let running statements finish within server.shutdown_grace,
    /// then end sessions with 57P01. SIGINT: end sessions now. SIGHUP: reload the config
    /// (an invalid new config is logged and the old one kept). Log level: RUST_LOG
    /// (default "info"), e.g. RUST_LOG=pgwarden=debug.
    Serve {
        /// The TOML configuration file.
        #[arg(short, long, env = "PGWARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 if valid, 64 with the key and line of the problem.
    ///
    /// Checks syntax, unknown keys, values, secret references (env:/file:) and TLS files.
    /// Does not connect to the upstream server.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(short, long, env = "PGWARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Print a SCRAM-SHA-256 verifier for a password, for [[auth.local]] `scram`.
    ///
    /// The format is PostgreSQL's own (as in pg_authid.rolpassword), so a verifier copied
    /// from `SELECT rolpassword FROM pg_authid` works too. Reads the password from the
    /// terminal (twice, without echo) or, when stdin is not a terminal, from its first line.
    HashPassword,
    /// Ask a running pgwarden to reload its configuration (SIGHUP), after checking the file.
    ///
    /// The file is validated first, exactly as check-config does (exit 64 with the key and
    /// line of the problem); only a valid file is signalled. The process is --pid, or the
    /// one in the config's server.pid_file. The running pgwarden reloads the file it was
    /// started with: the next statement of every session uses the new policy.
    Reload {
        /// The TOML configuration file (the one the running pgwarden uses).
        #[arg(short, long, env = "PGWARDEN_CONFIG")]
        config: PathBuf,
        /// The pgwarden process (default: read from server.pid_file).
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Test the statement policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Work with audit log directories.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Sign in to your identity provider (OAuth 2.0 device flow) and cache the tokens.
    ///
    /// Prints a URL and a code: open the URL in any browser, confirm the code, sign in. The
    /// tokens are kept in $PGWARDEN_CONFIG_DIR, $XDG_CONFIG_HOME/pgwarden or
    /// ~/.config/pgwarden (tokens.json, readable only by you). Then:
    /// PGPASSWORD="$(pgwarden token)" psql "host=pgwarden.example.com sslmode=require user=ROLE"
    Login {
        /// The issuer URL (as in pgwarden's [[auth.oidc]] issuer).
        #[arg(long, env = "PGWARDEN_ISSUER")]
        issuer: String,
        /// The OAuth client id registered for pgwarden's command line.
        #[arg(long, env = "PGWARDEN_CLIENT_ID")]
        client_id: String,
        /// Scopes to request (comma-separated, or repeat the option).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "openid,email,profile,offline_access"
        )]
        scope: Vec<String>,
        /// Trust only this CA (PEM) for the issuer's HTTPS, instead of the system's roots.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Sign in with the authorization code flow + PKCE instead: open the printed URL in a
        /// browser on this machine; it comes back to a loopback port. (The client must allow
        /// the redirect URI http://127.0.0.1/callback on any port.)
        #[arg(long)]
        browser: bool,
    },
    /// Print a valid token from the last `pgwarden login` (refreshed if it is about to expire).
    ///
    /// For PGPASSWORD="$(pgwarden token)". Prints the ID token, or the access token with
    /// --access. Exits non-zero, with the reason on stderr, when there is no usable sign-in.
    Token {
        /// Use the sign-in for this issuer (default: the most recent one).
        #[arg(long, env = "PGWARDEN_ISSUER")]
        issuer: Option<String>,
        /// Print the access token instead of the ID token.
        #[arg(long)]
        access: bool,
    },
    /// Run psql with a fresh token as its password: `pgwarden psql -- "host=… sslmode=require"`.
    ///
    /// Everything after `--` goes to psql unchanged; psql's exit status is pgwarden's.
    Psql {
        /// Use the sign-in for this issuer (default: the most recent one).
        #[arg(long, env = "PGWARDEN_ISSUER")]
        issuer: Option<String>,
        /// Send the access token instead of the ID token.
        #[arg(long)]
        access: bool,
        /// Arguments for psql.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// List and answer statements held for approval, through the admin API.
    ///
    /// Uses your token from `pgwarden login`. You see requests you made and those your groups
    /// may approve; you can never answer your own.
    ///
    ///   pgwarden approvals --admin https://pgwarden.example:9187 list
    ///   pgwarden approvals show 3f2c…
    ///   pgwarden approvals approve 3f2c… --reason "INC-42, checked the WHERE" --grant 30m
    ///   pgwarden approvals deny 3f2c… --reason "use the archive table"
    ///
    /// Exit status: 0 on success; 1 if the API refused (not found, your own request, already
    /// answered, not an approver for it) or could not be reached, with the reason on stderr.
    #[command(verbatim_doc_comment)]
    Approvals {
        #[command(flatten)]
        api: AdminApiArgs,
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// List the running sessions, and end one, through the admin API.
    ///
    /// Uses your token from `pgwarden login`. You see your own sessions; members of
    /// admin.operator_groups see and may end every session. An ended session's statement is
    /// cancelled, its transaction rolls back, and its client is told who ended it and why.
    ///
    ///   pgwarden sessions list
    ///   pgwarden sessions end 17 --reason "INC-42: runaway report"
    ///
    /// Exit status: 0 on success; 1 if the API refused (no such session that you may see)
    /// or could not be reached, with the reason on stderr.
    #[command(verbatim_doc_comment)]
    Sessions {
        #[command(flatten)]
        api: AdminApiArgs,
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Ask a running pgwarden whether it should get traffic (GET /readyz on its admin
    /// endpoint): exit 0 when ready, 1 with the reasons otherwise.
    ///
    /// For container health checks and exec probes, where no HTTP client is installed.
    Ready {
        /// The admin endpoint (pgwarden's [admin] listen).
        #[arg(long, env = "PGWARDEN_ADMIN", default_value = "http://127.0.0.1:9187")]
        admin: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// Trust only this CA (PEM) for an https admin endpoint.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Start a throwaway PostgreSQL with sample data and pgwarden in front of it, and print
    /// how to connect. Ctrl-C stops both and removes everything.
    ///
    /// Needs the PostgreSQL server binaries (found via PG_BINDIR, pg_config --bindir,
    /// /usr/lib/postgresql/*/bin or PATH). Works as root: the server then runs as the
    /// `postgres` (or `nobody`) user.
    Demo {
        /// Where pgwarden listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: std::net::SocketAddr,
        /// Start everything, run one query through pgwarden with psql, and exit
        /// (non-zero on failure). Used by the test suite.
        #[arg(long)]
        smoke_test: bool,
    },
}

/// Where the admin API is and who calls it (`approvals`, `sessions`).
#[derive(Debug, clap::Args)]
struct AdminApiArgs {
    /// The admin API (pgwarden's [admin] listen).
    #[arg(
        long,
        global = true,
        env = "PGWARDEN_ADMIN",
        default_value = "http://127.0.0.1:9187"
    )]
    admin: String,
    /// Use the sign-in for this issuer (default: the most recent one).
    #[arg(long, global = true, env = "PGWARDEN_ISSUER")]
    issuer: Option<String>,
    /// Trust only this CA (PEM) for an https admin API.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Use this token instead of the one from `pgwarden login` (for scripts).
    #[arg(long, global = true, env = "PGWARDEN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl From<AdminApiArgs> for pgwarden::admin::client::Target {
    fn from(api: AdminApiArgs) -> Self {
        Self {
            admin: api.admin,
            issuer: api.issuer,
            ca: api.ca,
            json: api.json,
            token: api.token,
        }
    }
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// The running sessions you may see: id, person, database, role, address, start, state,
    /// statements so far, application_name.
    List,
    /// End a session (see `list` for its id).
    End {
        /// The session id.
        id: String,
        /// Why (shown to the session's client, recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// Pending requests (--all: recent ones too).
    List {
        /// Also requests already answered, expired or withdrawn.
        #[arg(long)]
        all: bool,
    },
    /// One request: who, what, which rule, answers so far, the full statement.
    Show {
        /// The request id (from `list`, or the notice the requester saw).
        id: String,
    },
    /// Let the held statement run.
    Approve {
        /// The request id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Also let the same statement shape run for this person without waiting, for this
        /// long (e.g. 30m; at most approvals.max_grant).
        #[arg(long)]
        grant: Option<String>,
    },
    /// Refuse it; the requester sees the reason.
    Deny {
        /// The request id.
        id: String,
        /// Why (shown to the requester, recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Show what the gate would do with some SQL: each statement's analysis (kinds, tables,
    /// functions, settings, flags), its decision and the rule that made it. Someone
    /// [[access]] keeps out of the database or role is refused first (rule `access`).
    ///
    /// Exit status: 0 if the SQL would run, 1 if it would be refused or held, 64 if the
    /// config is invalid. Nothing connects anywhere.
    Test {
        /// The TOML configuration file whose [policy] is tested.
        #[arg(short, long, env = "PGWARDEN_CONFIG")]
        config: PathBuf,
        /// The person's user name.
        #[arg(long)]
        user: String,
        /// Their groups (comma-separated, or repeat the option).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The database.
        #[arg(long = "db")]
        database: String,
        /// The upstream role (default: the one [[access]] gives them on this database).
        #[arg(long)]
        role: Option<String>,
        /// The session's declared intent (as SET pgwarden.intent would declare it).
        #[arg(long)]
        intent: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The SQL (several statements allowed), as a client would send it.
        sql: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Prove an audit directory is complete and unaltered.
    ///
    /// Checks every record's hash, that seq increases by one, that each record links to the
    /// one before (prev_hash), across file boundaries too, and that no file is missing or
    /// truncated. Prints the first bad record of each break as file:line with the reason,
    /// and the last signed checkpoint as an anchor to keep for the next review.
    /// Exit status: 0 clean, 1 problems found, 2 the directory cannot be read.
    Verify {
        /// The audit directory ([audit] dir in the config).
        dir: PathBuf,
        /// Verify checkpoint signatures with this public key (`pgwarden audit pubkey`
        /// output). Without it, checkpoints are checked for position but not signature.
        /// Repeatable: after a key rotation, give the old and the new key.
        #[arg(long)]
        pubkey: Vec<PathBuf>,
        /// A record the log must still hold, as SEQ:HASH: an anchor pgwarden logged at a
        /// signed checkpoint ("audit checkpoint written") or an earlier verify printed.
        /// Catches the removal of the newest files together with their checkpoints.
        /// Repeatable.
        #[arg(long = "anchor", value_name = "SEQ:HASH")]
        anchors: Vec<pgwarden::audit::verify::Anchor>,
        /// Fail (exit 1) on warnings too: records no signature vouches for because a run
        /// ended without its final checkpoint (a crash or kill, or records added while
        /// pgwarden was stopped).
        #[arg(long)]
        strict: bool,
    },
    /// Find records by who, when and what, across rotated files.
    ///
    /// All given filters must match. Prints a table, or the records themselves as JSON
    /// lines with --json. Times are UTC unless they say otherwise: 2026-11-27,
    /// 2026-11-27T06:30[:15[.123]][Z|+01:00] (as the table prints them), milliseconds since
    /// 1970 (a record's `time`), or an age such as 15m, 2h, 7d. Warns when lines fail their
    /// hash check or the chain breaks (run `audit verify` then).
    Search {
        /// The audit directory.
        dir: PathBuf,
        /// The person (their name in any case): their logins, failed logins (as who they signed in as,
        /// or the name they claimed), everything in their sessions, their approvals.
        #[arg(long)]
        user: Option<String>,
        /// Only records at or after this time.
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time.
        #[arg(long)]
        until: Option<String>,
        /// Record type, e.g. session.start, auth.failure, statement.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Session id (from session.start).
        #[arg(long)]
        session: Option<u64>,
        /// A statement's decision (allow, deny, approve).
        #[arg(long)]
        decision: Option<String>,
        /// A table a statement touched, as SQL names it (`orders`, `public.orders`,
        /// `"Orders"`; unqualified matches any schema).
        #[arg(long)]
        table: Option<String>,
        /// Statements (and approval requests) whose declared intent contains this text
        /// (case-insensitive).
        #[arg(long)]
        intent: Option<String>,
        /// Case-insensitive text anywhere in the record.
        #[arg(long)]
        text: Option<String>,
        /// Print matching records as JSON lines, exactly as stored; a statement's
        /// statement.result follows it.
        #[arg(long)]
        json: bool,
    },
    /// Create an Ed25519 signing key for audit checkpoints ([audit] signing_key).
    ///
    /// Writes a PKCS#8 PEM file readable only by its owner; refuses to overwrite.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of a signing key, for reviewers' `audit verify --pubkey`.
    Pubkey {
        /// The private key file written by `audit keygen`.
        #[arg(long)]
        key: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let (filter, bad_filter) = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(e) => (
            tracing_subscriber::EnvFilter::new("info"),
            std::env::var("RUST_LOG").ok().map(|value| (value, e)),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into files, journald or docker logs.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // One `span` object (a session's id, peer, user, …); the list would repeat it.
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    if let Some((value, e)) = bad_filter {
        tracing::warn!(RUST_LOG = %value, error = %e, "RUST_LOG is not a valid filter; logging at info");
    }
}

/// Why `serve` could not start or run: one JSON log line with `--log-format json` (a log
/// collector reads nothing else), a plain message otherwise.
fn serve_failed(format: LogFormat, message: &str, code: ExitCode) -> ExitCode {
    match format {
        LogFormat::Json => tracing::error!(error = %message, "pgwarden stopped"),
        LogFormat::Pretty => eprintln!("pgwarden: {message}"),
    }
    code
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::HashPassword => hash_password(),
        Command::Audit { command } => match command {
            AuditCommand::Verify {
                dir,
                pubkey,
                anchors,
                strict,
            } => audit_verify(&dir, &pubkey, &anchors, strict),
            AuditCommand::Keygen { out } => audit_keygen(&out),
            AuditCommand::Search {
                dir,
                user,
                since,
                until,
                kind,
                session,
                decision,
                table,
                intent,
                text,
                json,
            } => {
                let now = pgwarden::audit::now_ms();
                let parse = |t: Option<String>| {
                    t.map(|t| pgwarden::audit::search::parse_time(&t, now))
                        .transpose()
                };
                // A misspelt value would quietly find nothing.
                if let Some(kind) = kind
                    .as_deref()
                    .filter(|k| !pgwarden::audit::event::TYPES.contains(k))
                {
                    eprintln!(
                        "pgwarden: --type {kind:?} is not a record type; one of: {}",
                        pgwarden::audit::event::TYPES.join(", ")
                    );
                    return ExitCode::from(2);
                }
                if let Some(decision) = decision
                    .as_deref()
                    .filter(|d| !["allow", "deny", "approve"].contains(d))
                {
                    eprintln!("pgwarden: --decision {decision:?}: statements are recorded as allow, deny or approve (held for approval)");
                    return ExitCode::from(2);
                }
                match (parse(since), parse(until)) {
                    (Ok(since), Ok(until)) => {
                        let query = pgwarden::audit::search::Query {
                            user,
                            since,
                            until,
                            kind,
                            session,
                            decision,
                            table,
                            intent,
                            text,
                        };
                        audit_search(&dir, &query, json)
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("pgwarden: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            AuditCommand::Pubkey { key } => audit_pubkey(&key),
        },
        Command::CheckConfig { config } => check_config(&config),
        Command::Reload { config, pid } => match pgwarden::app::signal_reload(&config, pid) {
            Ok(pid) => {
                println!(
                    "{} is valid; asked pgwarden (pid {pid}) to reload it",
                    config.display()
                );
                ExitCode::SUCCESS
            }
            Err(
                e
                @ (pgwarden::app::ReloadError::Config(_) | pgwarden::app::ReloadError::Setting(_)),
            ) => {
                eprintln!("error: {e} (nothing was reloaded)");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(e) => {
                eprintln!("pgwarden: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Policy {
            command:
                PolicyCommand::Test {
                    config,
                    user,
                    groups,
                    database,
                    role,
                    intent,
                    json,
                    sql,
                },
        } => policy_test(
            &config,
            pgwarden::policy::explain::TestSubject {
                user,
                groups,
                database,
                role,
                intent,
            },
            &sql,
            json,
        ),
        Command::Serve { config } => {
            init_logging(cli.log_format);
            // Validate before starting anything (no socket is bound on a bad config).
            if let Err(e) = Config::load(&config)
                .map_err(pgwarden::app::AppError::from)
                .and_then(|c| pgwarden::app::build_snapshot(c).map(|_| ()))
            {
                let message = format!("invalid configuration: {e}");
                return serve_failed(cli.log_format, &message, ExitCode::from(EXIT_CONFIG));
            }
            let log_format = cli.log_format;
            run_async_or(
                async move {
                    pgwarden::app::serve(&config)
                        .await
                        .map_err(|e| e.to_string())
                },
                move |message| serve_failed(log_format, message, ExitCode::FAILURE),
            )
        }
        Command::Login {
            issuer,
            client_id,
            scope,
            ca,
            browser,
        } => run_async(async move {
            let request = pgwarden::login::LoginRequest {
                issuer,
                client_id,
                scopes: scope,
                ca,
                flow: if browser {
                    pgwarden::login::LoginFlow::Browser
                } else {
                    pgwarden::login::LoginFlow::Device
                },
            };
            pgwarden::login::login(&request, &mut std::io::stderr())
                .await
                .map_err(|e| e.to_string())
        }),
        Command::Token { issuer, access } => run_async(async move {
            let token = pgwarden::login::token(issuer.as_deref(), token_choice(access))
                .await
                .map_err(|e| e.to_string())?;
            println!("{token}");
            Ok(())
        }),
        Command::Psql {
            issuer,
            access,
            args,
        } => psql(issuer.as_deref(), token_choice(access), &args),
        Command::Approvals { api, command } => {
            use pgwarden::admin::client::Call;
            let call = match command {
                ApprovalsCommand::List { all } => Call::List { all },
                ApprovalsCommand::Show { id } => Call::Show { id },
                ApprovalsCommand::Approve { id, reason, grant } => {
                    Call::Approve { id, reason, grant }
                }
                ApprovalsCommand::Deny { id, reason } => Call::Deny { id, reason },
            };
            admin_call(api, call)
        }
        Command::Sessions { api, command } => {
            use pgwarden::admin::client::Call;
            let call = match command {
                SessionsCommand::List => Call::Sessions,
                SessionsCommand::End { id, reason } => Call::EndSession { id, reason },
            };
            admin_call(api, call)
        }
        Command::Ready { admin, timeout, ca } => run_async(async move {
            let fetcher = pgwarden::net::http::Fetcher::new(
                ca.as_deref(),
                std::time::Duration::from_secs(timeout),
                64 * 1024,
            )
            .map_err(|e| e.to_string())?;
            let url = format!("{}/readyz", admin.trim_end_matches('/'));
            let request = openidconnect::http::Request::builder()
                .uri(&url)
                .body(Vec::new())
                .map_err(|e| format!("{url}: {e}"))?;
            let response = fetcher.fetch(request).await.map_err(|e| e.to_string())?;
            let body = String::from_utf8_lossy(response.body());
            if response.status().is_success() {
                println!("{}", body.trim());
                Ok(())
            } else {
                Err(format!(
                    "not ready ({}): {}",
                    response.status(),
                    body.trim()
                ))
            }
        }),
        Command::Demo { listen, smoke_test } => {
            init_logging(cli.log_format);
            run_async(async move {
                pgwarden::demo::run(listen, smoke_test)
                    .await
                    .map_err(|e| e.to_string())
            })
        }
    }
}

fn token_choice(access: bool) -> pgwarden::login::TokenChoice {
    if access {
        pgwarden::login::TokenChoice::Access
    } else {
        pgwarden::login::TokenChoice::Id
    }
}

/// `pgwarden psql`: fetch a token, then run psql with it in PGPASSWORD.
fn psql(issuer: Option<&str>, choice: pgwarden::login::TokenChoice, args: &[String]) -> ExitCode {
    let mut token = None;
    let fetched = run_async(async {
        token = Some(
            pgwarden::login::token(issuer, choice)
                .await
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    });
    let Some(token) = token else { return fetched };
    match std::process::Command::new("psql")
        .args(args)
        .env("PGPASSWORD", token)
        .status()
    {
        Ok(status) => ExitCode::from(
            status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1),
        ),
        Err(e) => {
            eprintln!("pgwarden: cannot run psql: {e} (is it installed and on PATH?)");
            ExitCode::FAILURE
        }
    }
}

/// Call the admin API (`pgwarden approvals`, `pgwarden sessions`) and print the answer.
fn admin_call(api: AdminApiArgs, call: pgwarden::admin::client::Call) -> ExitCode {
    let target = pgwarden::admin::client::Target::from(api);
    run_async(async move {
        let text = pgwarden::admin::client::run(&target, call).await?;
        println!("{text}");
        Ok(())
    })
}

fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    run_async_or(fut, |message| {
        eprintln!("pgwarden: {message}");
        ExitCode::FAILURE
    })
}

/// [`run_async`], reporting an error with `failed`.
fn run_async_or(
    fut: impl std::future::Future<Output = Result<(), String>>,
    failed: impl FnOnce(&str) -> ExitCode,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Room to analyse deeply nested statements in place (see sql::analyze); address
        // space only, pages are used as deep as a statement goes.
        .thread_stack_size(pgwarden::sql::WORKER_STACK)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgwarden: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let result = Config::load(path)
        .map_err(pgwarden::app::AppError::from)
        .and_then(pgwarden::app::build_snapshot);
    match result {
        Ok(snapshot) => {
            for warning in &snapshot.config.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn audit_search(
    dir: &std::path::Path,
    query: &pgwarden::audit::search::Query,
    json: bool,
) -> ExitCode {
    use pgwarden::audit::search::{format_time, search};
    use std::io::Write;
    let found = match search(dir, query) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return ExitCode::from(2);
        }
    };
    let hits = &found.hits;
    // Records can only be trusted as far as the chain holds: say when it does not.
    let warn_damage = || {
        if found.unchecked_lines > 0 || found.chain_breaks > 0 {
            eprintln!(
                "warning: {} line(s) fail their own hash check and were not searched, and the chain breaks in {} place(s): records were altered, removed or inserted. Run `pgwarden audit verify {}` before relying on these results",
                found.unchecked_lines,
                found.chain_breaks,
                dir.display()
            );
        }
    };
    // A reader that stops early (`| head`) is not an error.
    let mut out = std::io::stdout().lock();
    if json {
        for hit in hits {
            // The outcome of a statement follows it, as it does in the table.
            let result = hit.result_raw.iter().filter(|_| !hit.result_also_matched);
            for line in std::iter::once(&hit.raw).chain(result) {
                if writeln!(out, "{line}").is_err() {
                    return ExitCode::SUCCESS;
                }
            }
        }
        warn_damage();
        return ExitCode::SUCCESS;
    }
    let mut print = |line: String| writeln!(out, "{line}").is_ok();
    if !print(format!(
        "{:<24} {:>8} {:<16} {:>7} {:<16} detail",
        "time (UTC)", "seq", "type", "session", "user"
    )) {
        return ExitCode::SUCCESS;
    }
    // Outcomes already shown on their statement's line are not repeated.
    let shown: std::collections::HashSet<(u64, u64)> = hits
        .iter()
        .filter(|hit| hit.result.is_some())
        .filter_map(|hit| {
            Some((
                hit.record["session"].as_u64()?,
                hit.record["statement"].as_u64()?,
            ))
        })
        .collect();
    let mut printed = 0;
    for hit in hits {
        let r = &hit.record;
        if r["type"] == "statement.result"
            && r["session"]
                .as_u64()
                .zip(r["statement"].as_u64())
                .is_some_and(|key| shown.contains(&key))
        {
            continue;
        }
        printed += 1;
        let user = hit.user.as_deref().unwrap_or("");
        let text = |field: &str| r[field].as_str().unwrap_or("").to_owned();
        let detail = match r["type"].as_str().unwrap_or("") {
            "session.start" => format!(
                "db={} role={} from {}:{} tls={}",
                r["database"].as_str().unwrap_or(""),
                r["role"].as_str().unwrap_or(""),
                r["src_endpoint"]["ip"].as_str().unwrap_or(""),
                r["src_endpoint"]["port"],
                r["tls"].as_str().unwrap_or("off")
            ),
            "session.end" => format!(
                "{} after {} ms, {} statements",
                r["ending"].as_str().unwrap_or(""),
                r["duration_ms"],
                r["statements"]
            ),
            "auth.failure" => format!(
                "{} from {} db={}{}",
                r["reason"].as_str().unwrap_or(""),
                r["src_endpoint"]["ip"].as_str().unwrap_or(""),
                r["database"].as_str().unwrap_or("?"),
                // Signed in as one person, asking to be another: both names matter.
                match r["user"].as_str() {
                    Some(claimed) if Some(claimed) != hit.user.as_deref() =>
                        format!(" as {claimed:?}"),
                    _ => String::new(),
                }
            ),
            "file.start" => format!(
                "follows {}",
                r["previous_file"]
                    .as_str()
                    .unwrap_or("nothing (first file)")
            ),
            "checkpoint" => format!("covers seq {}", r["covers_seq"]),
            "approval.request" => format!(
                "{} rule={} db={} role={}{}: {}",
                text("request"),
                text("rule"),
                text("database"),
                text("role"),
                r["intent"]
                    .as_str()
                    .map(|i| format!(" intent={i:?}"))
                    .unwrap_or_default(),
                r["query"]["text"].as_str().unwrap_or("")
            ),
            "approval.answer" => format!(
                "{} {}{}{} → {}",
                text("request"),
                if r["approve"] == true {
                    "approved"
                } else {
                    "denied"
                },
                r["reason"]
                    .as_str()
                    .map(|why| format!(": {why:?}"))
                    .unwrap_or_default(),
                r["grant_minutes"]
                    .as_u64()
                    .map(|m| format!(" (grant {m} min)"))
                    .unwrap_or_default(),
                text("request_status")
            ),
            "approval.closed" => format!(
                "{} {}: {}",
                text("request"),
                text("request_status"),
                text("because")
            ),
            "admin.call" => format!("{} {} → {}", text("method"), text("path"), r["status"]),
            "admin.session_end" => format!(
                "session {} ended by {}{}",
                r["session"],
                text("by"),
                r["reason"]
                    .as_str()
                    .map(|why| format!(": {why:?}"))
                    .unwrap_or_default()
            ),
            "cancel.request" => format!(
                "from {} forwarded={}",
                r["src_endpoint"]["ip"].as_str().unwrap_or(""),
                r["forwarded"]
            ),
            "proxy.start" => format!("{} listening on {}", text("version"), text("listen")),
            "proxy.stop" => text("reason"),
            "config.reload" => format!(
                "{} {}{}",
                text("status"),
                text("path"),
                r["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            "log.write_failed" => format!("{} events lost: {}", r["lost_events"], text("error")),
            "log.recovered" => format!("{}: {} torn bytes sealed", text("file"), r["torn_bytes"]),
            "statement" => statement_detail(r, hit.result.as_ref()),
            "statement.result" => format!(
                "#{} {} {} rows={}{}",
                r["statement"],
                r["status"].as_str().unwrap_or(""),
                r["command"].as_str().unwrap_or(""),
                r["rows"],
                r["sqlstate"]
                    .as_str()
                    .map(|s| format!(" sqlstate={s}"))
                    .unwrap_or_default()
            ),
            _ => String::new(),
        };
        if !print(format!(
            "{:<24} {:>8} {:<16} {:>7} {:<16} {}",
            format_time(r["time"].as_u64().unwrap_or(0)),
            r["seq"].as_u64().unwrap_or(0),
            r["type"].as_str().unwrap_or(""),
            r["session"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            user,
            detail
        )) {
            return ExitCode::SUCCESS;
        }
    }
    eprintln!("{printed} record(s)");
    warn_damage();
    ExitCode::SUCCESS
}

/// `#3 allow [extended] SELECT … → SELECT rows=2 0.4ms` for the readable search output.
fn statement_detail(r: &serde_json::Value, result: Option<&serde_json::Value>) -> String {
    let text = r["query"]["text"].as_str().map_or_else(
        || {
            r["query"]["function_oid"]
                .as_u64()
                .map_or("(unparsable text, not recorded)".to_owned(), |oid| {
                    format!("function call, oid {oid}")
                })
        },
        |t| t.split_whitespace().collect::<Vec<_>>().join(" "),
    );
    let mut detail = format!(
        "#{} {} [{}] {}",
        r["statement"],
        r["decision"].as_str().unwrap_or(""),
        r["protocol"].as_str().unwrap_or(""),
        text
    );
    // Why: the rule that decided (and its reason), who approved, the declared intent.
    if let Some(rule) = r["rule"].as_str() {
        detail.push_str(&format!(" (rule {rule}"));
        if let Some(reason) = r["reason"].as_str() {
            detail.push_str(&format!(": {reason}"));
        }
        detail.push(')');
    }
    let approval = &r["approval"];
    if approval.is_object() {
        let by: Vec<&str> = approval["approved_by"]
            .as_array()
            .map(|names| names.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        detail.push_str(&format!(
            " [approved by {} in {}{}]",
            by.join(", "),
            approval["request"].as_str().unwrap_or("?"),
            if approval["grant"] == true {
                ", a grant"
            } else {
                ""
            }
        ));
    }
    if let Some(intent) = r["intent"].as_str() {
        detail.push_str(&format!(" intent={intent:?}"));
    }
    match result {
        Some(res) if res["skipped"] == true => detail.push_str(" → skipped"),
        Some(res) if res["unanswered"] == true => {
            detail.push_str(" → no answer: the session ended before the server answered")
        }
        Some(res) => {
            detail.push_str(&format!(
                " → {} rows={} {:.1}ms",
                res["command"].as_str().unwrap_or("-"),
                res["rows"],
                res["duration_us"].as_u64().unwrap_or(0) as f64 / 1000.0
            ));
            if let Some(code) = res["sqlstate"].as_str() {
                detail.push_str(&format!(" sqlstate={code}"));
            }
            if res["not_as_recorded"] == true {
                detail.push_str(" (ran an earlier statement of that name, not this text)");
            }
        }
        None if r["decision"] == "allow" => detail.push_str(" → (no result recorded)"),
        None => {}
    }
    detail
}

fn policy_test(
    config: &std::path::Path,
    who: pgwarden::policy::explain::TestSubject,
    sql: &str,
    json: bool,
) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = pgwarden::policy::explain::explain(&config.policy, &config.access, &who, sql);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("pgwarden: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render());
    }
    if report.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn audit_keygen(out: &std::path::Path) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pem = match pgwarden::audit::checkpoint::SigningKey::generate_pem() {
        Ok(pem) => pem,
        Err(e) => {
            eprintln!("pgwarden: cannot generate a key: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| f.write_all(pem.as_bytes()));
    if let Err(e) = written {
        eprintln!("pgwarden: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "wrote {}; set [audit] signing_key = \"file:{}\"",
        out.display(),
        out.display()
    );
    audit_pubkey(out)
}

fn audit_pubkey(key: &std::path::Path) -> ExitCode {
    let key = std::fs::read_to_string(key)
        .map_err(|e| format!("cannot read {}: {e}", key.display()))
        .and_then(|pem| pgwarden::audit::checkpoint::SigningKey::from_pem(&pem));
    match key {
        Ok(key) => {
            println!("{}", key.public_key());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgwarden: {e}");
            ExitCode::FAILURE
        }
    }
}

fn audit_verify(
    dir: &std::path::Path,
    pubkeys: &[PathBuf],
    anchors: &[pgwarden::audit::verify::Anchor],
    strict: bool,
) -> ExitCode {
    let public_keys = match pubkeys
        .iter()
        .map(|path| pgwarden::audit::checkpoint::PublicKey::load(path))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match pgwarden::audit::verify::verify_dir_with(dir, &public_keys, anchors) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return ExitCode::from(2);
        }
    };
    // A reader that stops early (`| head`) is not an error: what is not read is dropped.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    for problem in &report.problems {
        let _ = writeln!(out, "PROBLEM: {problem}");
    }
    let range = match (report.first_seq, report.last_seq) {
        (Some(first), Some(last)) => format!("seq {first}..={last}"),
        _ => "no records".to_owned(),
    };
    match (!public_keys.is_empty(), report.last_checkpoint) {
        (true, Some(seq)) => {
            let _ = writeln!(out,
                "signed: {} checkpoint(s) verified, the last covering seq {seq}; {} record(s) after it are not covered by a signature",
                report.checkpoints, report.unsigned_tail
            );
            if let Some(anchor) = &report.last_checkpoint_record {
                let _ = writeln!(out, "anchor: {anchor} (keep it elsewhere; a later `audit verify --anchor {anchor}` fails if the log no longer reaches it)");
            }
        }
        (true, None) => {
            let _ = writeln!(out,
                "PROBLEM: no signed checkpoint: nothing proves these records were not rewritten from the start"
            );
        }
        (false, _) if report.checkpoints > 0 => {
            let _ = writeln!(
                out,
                "signed: {} checkpoint(s) found but not verified (pass --pubkey)",
                report.checkpoints
            );
        }
        (false, _) => {}
    }
    if !anchors.is_empty() && report.is_clean() {
        let _ = writeln!(
            out,
            "anchored: the {} record(s) given with --anchor are in the log, unchanged",
            anchors.len()
        );
    }
    // Asked to check signatures, a log without a single signed checkpoint proves nothing:
    // anyone can recompute a plain hash chain, or empty the files.
    let unsigned = !public_keys.is_empty() && report.last_checkpoint.is_none();
    let warned = match report.warnings.len() {
        0 => String::new(),
        n => format!("; {n} warning(s) above"),
    };
    let warnings_fail = strict && !report.warnings.is_empty();
    if report.is_clean() && !unsigned && !warnings_fail {
        let _ = writeln!(
            out,
            "OK: {} records in {} files ({range}), chain intact{warned}; last hash {}",
            report.records,
            report.files,
            report.last_hash.as_deref().unwrap_or("-")
        );
        ExitCode::SUCCESS
    } else {
        let counted = if warnings_fail {
            report.warnings.len()
        } else {
            0
        };
        let _ = writeln!(
            out,
            "FAILED: {} problem(s) in {} records, {} files ({range})",
            report.problems.len() + usize::from(unsigned) + counted,
            report.records,
            report.files
        );
        ExitCode::FAILURE
    }
}

fn hash_password() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Again: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("pgwarden: the passwords do not match");
                return ExitCode::FAILURE;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("pgwarden: cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("pgwarden: cannot read the password from stdin: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        eprintln!("pgwarden: the password is empty");
        return ExitCode::FAILURE;
    }
    println!(
        "{}",
        pgwarden::auth::scram::hash_password(password.as_bytes())
    );
    ExitCode::SUCCESS
}
