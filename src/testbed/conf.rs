//! The postgresql.conf settings file and checks on [`PostgresOptions`].

use std::path::Path;

use super::{PostgresOptions, TestbedError, HOST};

/// Settings this module owns: letting a caller override them would make
/// [`ThrowawayPostgres::port`](super::ThrowawayPostgres::port) and
/// [`ThrowawayPostgres::socket_dir`](super::ThrowawayPostgres::socket_dir) lie.
const MANAGED_SETTINGS: [&str; 2] = ["port", "unix_socket_directories"];

pub(super) fn validate_options(opts: &PostgresOptions) -> Result<(), TestbedError> {
    let invalid = |name: &str, reason: &str| TestbedError::InvalidOption {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if opts.superuser.is_empty() || opts.superuser.contains('\0') {
        return Err(invalid("superuser", "must be non-empty and contain no NUL"));
    }
    // initdb reads only the first line of the password file.
    if opts.superuser_password.is_empty() || opts.superuser_password.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            "superuser_password",
            "must be non-empty and a single line",
        ));
    }
    if opts.port == Some(0) {
        return Err(invalid("port", "use None to pick a free port"));
    }
    Ok(())
}

/// Quotes a postgresql.conf value. Every value is quoted (the server parses
/// quoted integers and booleans too), so no caller value can end the line
/// early or smuggle in another setting.
fn conf_quote(value: &str) -> Option<String> {
    if value.chars().any(char::is_control) {
        return None;
    }
    Some(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

/// The settings file included from postgresql.conf. It is rewritten for each
/// start attempt, because only the port changes between them.
pub(super) fn render_conf(
    port: u16,
    socket_dir: &Path,
    extra: &[(String, String)],
) -> Result<String, TestbedError> {
    let socket_dir = socket_dir
        .to_str()
        .ok_or_else(|| TestbedError::InvalidOption {
            name: "TMPDIR".to_owned(),
            reason: format!("{} is not valid UTF-8", socket_dir.display()),
        })?;
    let quote = |name: &str, value: &str| {
        conf_quote(value).ok_or_else(|| TestbedError::InvalidOption {
            name: name.to_owned(),
            reason: "value contains a control character (newline?)".to_owned(),
        })
    };
    let mut lines = vec![
        "# Written by pgwarden's testbed: a throwaway server tuned for speed, not durability."
            .to_owned(),
        format!("listen_addresses = {}", quote("listen_addresses", HOST)?),
        format!("port = {port}"),
        format!(
            "unix_socket_directories = {}",
            quote("unix_socket_directories", socket_dir)?
        ),
        "password_encryption = 'scram-sha-256'".to_owned(),
        "fsync = off".to_owned(),
        "synchronous_commit = off".to_owned(),
        "full_page_writes = off".to_owned(),
        "max_connections = 200".to_owned(),
        // English server messages, so a port conflict is recognisable in the log.
        "lc_messages = 'C'".to_owned(),
    ];
    for (name, value) in extra {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !valid_name {
            return Err(TestbedError::InvalidOption {
                name: name.clone(),
                reason: "setting names are letters, digits, '_' and '.'".to_owned(),
            });
        }
        if MANAGED_SETTINGS
            .iter()
            .any(|managed| managed.eq_ignore_ascii_case(name))
        {
            return Err(TestbedError::InvalidOption {
                name: name.clone(),
                reason: "managed by the testbed; use PostgresOptions::port instead".to_owned(),
            });
        }
        lines.push(format!("{name} = {}", quote(name, value)?));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_conf_with_quoted_settings() {
        let extra = vec![
            ("max_connections".to_owned(), "300".to_owned()),
            ("log_line_prefix".to_owned(), "%m [%p] it's".to_owned()),
        ];
        let conf = render_conf(5433, Path::new("/tmp/pg/sock"), &extra).unwrap();
        assert!(conf.contains("\nport = 5433\n"));
        assert!(conf.contains("\nlisten_addresses = '127.0.0.1'\n"));
        assert!(conf.contains("\nunix_socket_directories = '/tmp/pg/sock'\n"));
        assert!(conf.contains("\npassword_encryption = 'scram-sha-256'\n"));
        assert!(conf.contains("\nfsync = off\n"));
        assert!(conf.contains("\nmax_connections = '300'\n"));
        assert!(conf.contains("\nlog_line_prefix = '%m [%p] it''s'\n"));
        // Extra settings come after the defaults, so they win.
        let default_pos = conf.find("max_connections = 200").unwrap();
        let extra_pos = conf.find("max_connections = '300'").unwrap();
        assert!(default_pos < extra_pos);
    }

    #[test]
    fn rejects_unsafe_or_managed_settings() {
        let one = |name: &str, value: &str| {
            render_conf(
                5432,
                Path::new("/tmp"),
                &[(name.to_owned(), value.to_owned())],
            )
        };
        assert!(one("work_mem", "64MB").is_ok());
        assert!(one("work_mem", "1\nport = 1").is_err());
        assert!(one("work mem", "64MB").is_err());
        assert!(one("", "x").is_err());
        assert!(one("PORT", "5555").is_err());
        assert!(one("unix_socket_directories", "/tmp").is_err());
    }

    #[test]
    fn validates_options() {
        assert!(validate_options(&PostgresOptions::default()).is_ok());
        let bad_password = PostgresOptions {
            superuser_password: "a\nb".to_owned(),
            ..PostgresOptions::default()
        };
        assert!(validate_options(&bad_password).is_err());
        let port_zero = PostgresOptions {
            port: Some(0),
            ..PostgresOptions::default()
        };
        assert!(validate_options(&port_zero).is_err());
        let no_user = PostgresOptions {
            superuser: String::new(),
            ..PostgresOptions::default()
        };
        assert!(validate_options(&no_user).is_err());
    }
}
