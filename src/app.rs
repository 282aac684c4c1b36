//! Wiring: build the shared context from a config, bind the listener, run until a signal.
//!
//! SIGTERM is graceful (stop accepting, let running statements finish within
//! `server.shutdown_grace`, then end sessions with 57P01); SIGINT is fast; SIGHUP reloads the
//! config file, keeping the old config if the new one is invalid.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::audit::event::Status;

/// Statement analyses kept (by text), shared by all sessions.
const ANALYSIS_CACHE_ENTRIES: usize = 4096;
use crate::audit::{AuditError, AuditLog, Event};
use crate::config::{Config, ConfigError, TlsMode};
use crate::net::{listener, tls};
use crate::session::shutdown::{Phase, Shutdown};
use crate::session::{Context, Snapshot};
use crate::upstream::cancel::CancelMap;
use crate::upstream::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting names a file or value that cannot be used (e.g. an unreadable certificate).
    #[error("{}: `{key}`: {detail}", path.display())]
    Setting {
        path: std::path::PathBuf,
        key: &'static str,
        detail: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("cannot write the pid file {}: {source}", path.display())]
    PidFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Everything derived from a config that can fail: checked by `check-config` too.
pub fn build_snapshot(config: Config) -> Result<Snapshot, AppError> {
    let setting_error = |e: tls::TlsError| AppError::Setting {
        path: config.path.clone(),
        key: match e {
            tls::TlsError::Cert { .. } => "server.tls.cert",
            tls::TlsError::Key { .. } => "server.tls.key",
            tls::TlsError::Rustls(_) => "server.tls",
        },
        detail: e.to_string(),
    };
    let (tls, channel_binding) = match (
        &config.server.tls_mode,
        &config.server.tls_cert,
        &config.server.tls_key,
    ) {
        (TlsMode::Disabled, _, _) | (_, None, _) | (_, _, None) => (None, None),
        (_, Some(cert), Some(key)) => {
            let acceptor = tls::server_config(cert, key).map_err(setting_error)?;
            let leaf = tls::load_certs(cert).map_err(setting_error)?;
            let binding = leaf.first().and_then(|der| tls::tls_server_end_point(der));
            if binding.is_none() {
                warn!("the server certificate's signature algorithm gives no channel-binding hash; SCRAM-SHA-256-PLUS will not be offered");
            }
            (Some(TlsAcceptor::from(acceptor)), binding)
        }
    };
    if let Some((cert, key)) = &config.admin_tls {
        tls::https_server_config(cert, key).map_err(|e| AppError::Setting {
            path: config.path.clone(),
            key: "admin.tls",
            detail: e.to_string(),
        })?;
    }
    let upstream = Endpoint::from_config(&config).map_err(|e| AppError::Setting {
        path: config.path.clone(),
        key: "upstream",
        detail: e.to_string(),
    })?;
    let issuers =
        crate::auth::oidc::Issuers::new(&config.oidc).map_err(|detail| AppError::Setting {
            path: config.path.clone(),
            key: "auth.oidc",
            detail,
        })?;
    static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(Snapshot {
        config,
        tls,
        channel_binding,
        upstream,
        issuers: Arc::new(issuers),
        generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    })
}

/// A running proxy.
pub struct Server {
    /// `server.listen` and `[audit]` as started: a reload cannot change them.
    started_with: (SocketAddr, Option<crate::audit::Settings>),
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    oauthbearer_addr: Option<SocketAddr>,
    ctx: Arc<Context>,
    tracker: TaskTracker,
    /// Stops the admin endpoint.
    admin_stop: tokio_util::sync::CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.admin_stop.cancel();
    }
}

impl Server {
    /// Bind `server.listen` and start accepting. `[policy]` decides every statement.
    pub async fn start(config: Config) -> Result<Self, AppError> {
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let addr = config.server.listen;
        let admin_listen = config.admin_listen;
        // A certificate the operator named that cannot be loaded stops the start, as for
        // the server's own TLS.
        let admin_tls = match &config.admin_tls {
            None => None,
            Some((cert, key)) => Some(TlsAcceptor::from(
                tls::https_server_config(cert, key).map_err(|e| AppError::Setting {
                    path: config.path.clone(),
                    key: "admin.tls",
                    detail: e.to_string(),
                })?,
            )),
        };
        let oauthbearer_listen = config.server.oauthbearer_listen;
        let audit = match &config.audit {
            None => None,
            Some(settings) => Some((AuditLog::open(settings.clone())?.0, settings.clone())),
        };
        let checkpoints = audit
            .as_ref()
            .filter(|(_, settings)| settings.signing_key.is_some())
            .map(|(log, settings)| (log.clone(), settings.checkpoint_interval));
        let first_session = match &config.audit {
            Some(settings) => crate::audit::next_session_id(&settings.dir)?,
            None => 1,
        };
        let audit = audit.map(|(log, _)| log);
        let audit_lost_events = audit
            .as_ref()
            .map(AuditLog::lost_events)
            .unwrap_or_default();
        let snapshot = build_snapshot(config)?;
        snapshot.issuers.start();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AppError::Bind { addr, source })?;
        let ctx = Arc::new(Context {
            snapshot: ArcSwap::from_pointee(snapshot),
            cancels: CancelMap::default(),
            process_key: rand::random(),
            approvals: crate::approvals::Approvals::default(),
            shutdown: Shutdown::default(),
            audit,
            first_session,
            reloads: tokio::sync::watch::Sender::new(()),
            analyzer: crate::sql::Analyzer::new(ANALYSIS_CACHE_ENTRIES),
            failures: Default::default(),
            metrics: crate::metrics::Metrics::new(audit_lost_events),
            catalogs: Default::default(),
            upstream_probe: Default::default(),
            upstream_logins: Default::default(),
            sessions: Default::default(),
        });
        if let Some(audit) = &ctx.audit {
            audit
                .record(Event::ProxyStart {
                    version: crate::VERSION.to_owned(),
                    listen: local_addr.to_string(),
                    first_session,
                })
                .await?;
        }
        if let Some((log, interval)) = checkpoints {
            // Also when idle: a checkpoint proves the log was alive and whole up to then.
            let mut phase = ctx.shutdown.watch();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => if log.checkpoint().await.is_err() { break },
                        // The shutdown path writes the final checkpoint.
                        _ = phase.changed() => break,
                    }
                }
            });
        }
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let admin_addr = match admin_listen {
            None => None,
            Some(admin) => {
                let admin_listener =
                    TcpListener::bind(admin)
                        .await
                        .map_err(|source| AppError::Bind {
                            addr: admin,
                            source,
                        })?;
                let bound = admin_listener
                    .local_addr()
                    .map_err(|source| AppError::Bind {
                        addr: admin,
                        source,
                    })?;
                let scheme = if admin_tls.is_some() { "https" } else { "http" };
                tokio::spawn(crate::admin::serve(
                    admin_listener,
                    admin_tls,
                    ctx.clone(),
                    admin_stop.clone(),
                ));
                info!(listen = %bound, scheme, "admin endpoint (/healthz, /readyz, /metrics, /approvals) listening");
                Some(bound)
            }
        };
        let oauthbearer_listener = match oauthbearer_listen {
            None => None,
            Some(addr) => {
                let bound = TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Bind { addr, source })?;
                if let Ok(local) = bound.local_addr() {
                    info!(listen = %local, "OAUTHBEARER sign-in (PostgreSQL 18 clients) listening");
                }
                Some(bound)
            }
        };
        let oauthbearer_addr = oauthbearer_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok());
        let tracker = TaskTracker::new();
        tracker.spawn(listener::accept_loop(
            listener,
            oauthbearer_listener,
            ctx.clone(),
            tracker.clone(),
        ));
        info!(listen = %local_addr, upstream = %ctx.snapshot.load().upstream.describe(), "pgwarden is accepting connections");
        let started_with = {
            let snapshot = ctx.snapshot.load();
            (snapshot.config.server.listen, snapshot.config.audit.clone())
        };
        Ok(Self {
            started_with,
            local_addr,
            admin_addr,
            oauthbearer_addr,
            ctx,
            tracker,
            admin_stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the OAUTHBEARER listener listens, if configured.
    pub fn oauthbearer_addr(&self) -> Option<SocketAddr> {
        self.oauthbearer_addr
    }

    /// Where the admin endpoint listens, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Sessions currently holding a proxy-issued cancel key (i.e. logged in).
    pub fn active_sessions(&self) -> usize {
        self.ctx.cancels.len()
    }

    /// Re-read the config file; on any error keep the current config. Everything applies to
    /// new sessions except `server.listen`, which needs a restart (a warning says so).
    pub async fn reload(&self, path: &Path) -> Result<(), AppError> {
        let result = self.try_reload(path);
        self.ctx.metrics.reload(result.is_ok());
        if let Some(audit) = &self.ctx.audit {
            let event = Event::ConfigReload {
                path: path.display().to_string(),
                status: if result.is_ok() {
                    Status::Success
                } else {
                    Status::Failure
                },
                error: result.as_ref().err().map(ToString::to_string),
            };
            if let Err(e) = audit.record(event).await {
                warn!(error = %e, "could not audit the reload");
            }
        }
        result
    }

    fn try_reload(&self, path: &Path) -> Result<(), AppError> {
        let config = Config::load(path)?;
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let mut snapshot = build_snapshot(config)?;
        let current = self.ctx.snapshot.load();
        if snapshot.config.oidc == current.config.oidc {
            // Same issuers: keep their fetched keys (and refreshers).
            snapshot.issuers = current.issuers.clone();
        } else {
            snapshot.issuers.start();
        }
        let listen = snapshot.config.server.listen;
        if listen != self.started_with.0 {
            warn!(
                listen = %listen,
                still_listening_on = %self.local_addr,
                "server.listen changed: restart pgwarden to apply it"
            );
        }
        if snapshot.config.audit != self.started_with.1 {
            warn!("[audit] changed: restart pgwarden to apply it (the log keeps its current settings)");
        }
        self.ctx.snapshot.store(Arc::new(snapshot));
        // Sessions it no longer lets in end (each checks itself).
        self.ctx.reloads.send_replace(());
        info!(
            path = %path.display(),
            "configuration reloaded; open sessions use it from their next statement"
        );
        Ok(())
    }

    /// Stop accepting; sessions end with 57P01 once idle.
    pub fn drain(&self) {
        self.ctx.shutdown.advance(Phase::Draining);
    }

    /// End every session now with 57P01.
    pub fn terminate(&self) {
        self.ctx.shutdown.advance(Phase::Terminating);
    }

    /// Wait up to `timeout` for all sessions (and the accept loop) to end; true if they did.
    pub async fn wait(&self, timeout: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Drain for up to `grace`, then terminate the remaining sessions.
    pub async fn shutdown(self, grace: Duration) {
        let reason = if grace.is_zero() {
            "fast shutdown"
        } else {
            "graceful shutdown"
        };
        self.stop(grace, reason).await;
    }

    /// [`Self::shutdown`], recording `stop_reason` in the audit log's `proxy.stop`.
    pub async fn stop(self, grace: Duration, stop_reason: &str) {
        self.drain();
        if !self.wait(grace).await {
            if grace.is_zero() {
                info!(
                    sessions = self.tracker.len(),
                    "ending the open sessions now"
                );
            } else {
                warn!(
                    sessions = self.tracker.len(),
                    "grace period over; terminating remaining sessions"
                );
            }
        }
        self.terminate();
        if !self.wait(Duration::from_secs(5)).await {
            error!(
                sessions = self.tracker.len(),
                "sessions did not end; exiting anyway"
            );
        }
        self.admin_stop.cancel();
        if let Some(audit) = &self.ctx.audit {
            let stop = Event::ProxyStop {
                reason: stop_reason.to_owned(),
            };
            // The final checkpoint signs everything, the stop record included.
            let result = async {
                audit.record(stop).await?;
                audit.checkpoint().await?;
                audit.flush().await
            };
            if let Err(e) = result.await {
                error!(error = %e, "could not write the final audit records");
            }
        }
    }
}

/// `pgwarden serve`: run until SIGTERM/SIGINT, reloading on SIGHUP.
pub async fn serve(config_path: &Path) -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = Config::load(config_path)?;
    let grace = config.server.shutdown_grace;
    let pid_file = config.server.pid_file.clone();
    let pid_error = |path: &std::path::PathBuf| {
        let path = path.clone();
        move |source| AppError::PidFile { path, source }
    };
    // Opened before anything listens, so a path that cannot be written stops the start
    // before "accepting connections" is logged; written only once started, so a start that
    // fails (another pgwarden holds the port) leaves that one's pid file as it was.
    let pid_handle = match &pid_file {
        Some(path) => {
            let existed = path.exists();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(pid_error(path))?;
            Some((path, file, existed))
        }
        None => None,
    };
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            if let Some((path, _, false)) = &pid_handle {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    if let Some((path, mut file, _)) = pid_handle {
        use std::io::Write;
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(pid_error(path))?;
    }
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
    let reason = loop {
        tokio::select! {
            _ = term.recv() => {
                info!(grace_s = grace.as_secs(), "SIGTERM: graceful shutdown (SIGINT to end sessions now)");
                server.drain();
                tokio::select! {
                    done = server.wait(grace) => {
                        if !done {
                            warn!(
                                sessions = server.tracker.len(),
                                "grace period over; terminating remaining sessions"
                            );
                        }
                        break "SIGTERM";
                    }
                    _ = int.recv() => {
                        info!("SIGINT: ending sessions now");
                        break "SIGTERM, then SIGINT";
                    }
                }
            }
            _ = int.recv() => {
                info!("SIGINT: fast shutdown");
                break "SIGINT";
            }
            _ = hup.recv() => {
                if let Err(e) = server.reload(config_path).await {
                    error!(error = %e, "reload failed; keeping the current configuration");
                }
            }
        }
    };
    server.stop(Duration::ZERO, reason).await;
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    info!("pgwarden stopped");
    Ok(())
}

/// `pgwarden reload`: check the config file, then ask the running pgwarden (found through
/// `pid` or `server.pid_file`) to reload it with SIGHUP. Returns the process id signalled.
pub fn signal_reload(config_path: &Path, pid: Option<i32>) -> Result<i32, ReloadError> {
    // The same checks as the reload itself: a broken file is reported here, not only in
    // the server's log.
    let snapshot = build_snapshot(Config::load(config_path)?)?;
    let pid = match pid {
        Some(pid) => pid,
        None => {
            let path = snapshot
                .config
                .server
                .pid_file
                .clone()
                .ok_or(ReloadError::NoPid)?;
            let text = std::fs::read_to_string(&path).map_err(|source| ReloadError::PidFile {
                path: path.clone(),
                source,
            })?;
            text.trim().parse().map_err(|_| ReloadError::BadPid(path))?
        }
    };
    let target = rustix::process::Pid::from_raw(pid).ok_or(ReloadError::NoPid)?;
    // A pid file left by a pgwarden that was killed may name a process that reused the
    // number: SIGHUP ends most programs.
    if let Some(running) = RunningProcess::of(pid) {
        if !running.serves {
            return Err(ReloadError::NotPgwarden {
                pid,
                command: running.command,
            });
        }
        if let Some(theirs) = running.config {
            let same = match (theirs.canonicalize(), config_path.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => true,
            };
            if !same {
                return Err(ReloadError::OtherConfig { pid, theirs });
            }
        }
    }
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .map_err(|e| ReloadError::Signal(pid, std::io::Error::from(e)))?;
    Ok(pid)
}

/// What a process says about itself in /proc (Linux): whether it is `pgwarden serve`, and the
/// config file it was started with.
struct RunningProcess {
    command: String,
    serves: bool,
    config: Option<std::path::PathBuf>,
}

impl RunningProcess {
    /// `None` where /proc cannot tell (another system, or no access).
    fn of(pid: i32) -> Option<Self> {
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let serve_at = args
            .iter()
            .skip(1)
            .position(|a| a == "serve")
            .map(|i| i + 1);
        let mut config = serve_at.and_then(|at| {
            let rest = &args[at + 1..];
            rest.iter().enumerate().find_map(|(i, arg)| {
                if arg == "--config" || arg == "-c" {
                    rest.get(i + 1).cloned()
                } else {
                    arg.strip_prefix("--config=")
                        .or_else(|| arg.strip_prefix("-c").filter(|v| !v.is_empty()))
                        .map(str::to_owned)
                }
            })
        });
        if config.is_none() && serve_at.is_some() {
            config = std::fs::read(proc_dir.join("environ"))
                .ok()
                .and_then(|env| {
                    env.split(|&b| b == 0).find_map(|var| {
                        var.strip_prefix(b"PGWARDEN_CONFIG=")
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                });
        }
        // A relative path is relative to where that process started.
        let config = config.map(std::path::PathBuf::from).and_then(|path| {
            if path.is_absolute() {
                Some(path)
            } else {
                std::fs::read_link(proc_dir.join("cwd"))
                    .ok()
                    .map(|cwd| cwd.join(path))
            }
        });
        Some(Self {
            command: args.join(" "),
            serves: serve_at.is_some(),
            config,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Setting(#[from] AppError),
    #[error("which pgwarden? give --pid, or set server.pid_file in the config")]
    NoPid,
    #[error("cannot read the pid file {}: {source}", path.display())]
    PidFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} does not hold a process id", .0.display())]
    BadPid(std::path::PathBuf),
    #[error("cannot signal process {0}: {1}")]
    Signal(i32, std::io::Error),
    #[error("process {pid} is not a running `pgwarden serve` (it runs `{command}`); is the pid file left over from a pgwarden that was stopped? Nothing was signalled")]
    NotPgwarden { pid: i32, command: String },
    #[error("pgwarden (pid {pid}) runs with {}, and a reload re-reads that file: check it instead (pgwarden reload --config {}). Nothing was signalled", theirs.display(), theirs.display())]
    OtherConfig {
        pid: i32,
        theirs: std::path::PathBuf,
    },
}
