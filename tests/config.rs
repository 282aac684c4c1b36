//! The documented example config is valid, and errors point at the key and line.

use std::path::Path;

use pgwarden::config::{Config, ConfigError};

fn example_in_temp_dir(test: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("pgwarden-config-{test}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/app_ro.password"), "ro-secret\n").unwrap();
    let key = pgwarden::audit::checkpoint::SigningKey::generate_pem().unwrap();
    std::fs::write(dir.join("secrets/audit.key"), key).unwrap();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml"))
            .unwrap();
    // PATH is always set: stands in for APP_RW_PASSWORD and PGWARDEN_MASKING_KEY without
    // touching the environment.
    (
        dir,
        text.replace("env:APP_RW_PASSWORD", "env:PATH")
            .replace("env:PGWARDEN_MASKING_KEY", "env:PATH"),
    )
}

#[test]
fn the_example_config_is_valid() {
    let (dir, text) = example_in_temp_dir("valid");
    let config = Config::from_toml(&dir.join("example.toml"), &text).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:6432");
    assert_eq!(config.upstream.roles.len(), 2);
    assert_eq!(
        config.upstream.roles["app_ro"].as_ref().unwrap().expose(),
        "ro-secret"
    );
    assert_eq!(config.local_users["ci-bot"].groups, ["ci"]);
    assert_eq!(config.access.len(), 3);
    assert_eq!(config.oidc.len(), 1);
    assert_eq!(config.oidc[0].audiences, ["pgwarden"]);
    assert_eq!(config.oidc[0].required_claims[0].0, "email_verified");
    assert_eq!(config.rate_limit.max_failures, 5);
    assert_eq!(config.admin_listen.unwrap().to_string(), "127.0.0.1:9187");
    let audit = config.audit.as_ref().unwrap();
    assert_eq!(audit.dir, dir.join("audit"));
    assert!(audit.signing_key.is_some());
    assert_eq!(config.masking.rules.len(), 2);
    assert_eq!(
        config.masking.rules[1].strategy,
        pgwarden::masking::Strategy::Partial { keep: 4 }
    );
    assert_eq!(config.masking.detectors.enabled.len(), 6);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn upstream_auth_methods_default_to_scram_only_where_the_server_could_be_impersonated() {
    use pgwarden::config::UpstreamAuth;
    let (dir, text) = example_in_temp_dir("upstream-auth");
    let path = dir.join("example.toml");
    let methods = |text: &str| {
        Config::from_toml(&path, text)
            .unwrap()
            .upstream
            .auth_methods
    };
    assert_eq!(methods(&text), UpstreamAuth::ALL, "loopback");
    let remote = text.replace("host = \"127.0.0.1\"", "host = \"db.internal\"");
    assert_eq!(
        methods(&remote.replace("sslmode = \"disable\"", "sslmode = \"require\"")),
        [UpstreamAuth::ScramSha256]
    );
    assert_eq!(methods(&remote), [UpstreamAuth::ScramSha256], "plaintext");
    let verified = remote.replace(
        "sslmode = \"disable\"",
        "sslmode = \"verify-full\"\nca = \"ca.pem\"",
    );
    assert_eq!(methods(&verified), UpstreamAuth::ALL);
    let chosen = remote.replace(
        "# auth_methods = [\"scram-sha-256\"]",
        "auth_methods = [\"md5\", \"scram-sha-256\"]",
    );
    assert_eq!(
        methods(&chosen),
        [UpstreamAuth::Md5, UpstreamAuth::ScramSha256]
    );
    let none = remote.replace("# auth_methods = [\"scram-sha-256\"]", "auth_methods = []");
    let err = Config::from_toml(&path, &none).unwrap_err().to_string();
    assert!(err.contains("upstream.auth_methods"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_name_the_key_and_line() {
    let (dir, text) = example_in_temp_dir("errors");
    let bad = text.replace("max_connections = 1000", "max_connections = 0");
    let err = Config::from_toml(&dir.join("example.toml"), &bad).unwrap_err();
    let line = text
        .lines()
        .position(|l| l.starts_with("max_connections"))
        .unwrap()
        + 1;
    match &err {
        ConfigError::Invalid {
            key, line: Some(l), ..
        } => {
            assert_eq!(key, "server.max_connections");
            assert_eq!(*l, line);
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(
        err.to_string()
            .contains(&format!("example.toml:{line}: `server.max_connections`")),
        "{err}"
    );

    let unknown = text.replace("max_connections = 1000", "max_conections = 1000");
    let err = Config::from_toml(&dir.join("example.toml"), &unknown)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "example.toml:{line}: `server.max_conections`: unknown field"
        )),
        "{err}"
    );

    let bad_role = text.replace("roles = [\"app_rw\", \"app_ro\"]", "roles = [\"admin\"]");
    let err = Config::from_toml(&dir.join("example.toml"), &bad_role)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`access[0].roles`") && err.contains("admin"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn oidc_issuers_must_be_https_unless_a_loopback_development_issuer() {
    let (dir, text) = example_in_temp_dir("oidc");
    let path = dir.join("example.toml");
    let cases = [
        (
            text.replace("https://idp.example.com", "http://idp.example.com"),
            "auth.oidc[0].issuer",
            "must be https",
        ),
        (
            text.replace("https://idp.example.com", "http://idp.example.com")
                .replace("# allow_http = false", "allow_http = true"),
            "auth.oidc[0].allow_http",
            "only allowed for loopback",
        ),
        (
            text.replace("audience = \"pgwarden\"", "audience = []"),
            "auth.oidc[0].audience",
            "at least one",
        ),
        (
            text.replace("leeway = \"60s\"", "leeway = \"1h\""),
            "auth.oidc[0].leeway",
            "at most",
        ),
        (
            text.replace("listen = \"127.0.0.1:9187\"", "listen = \"nowhere\""),
            "admin.listen",
            "not an address",
        ),
    ];
    for (bad, key, words) in cases {
        match Config::from_toml(&path, &bad) {
            Err(ConfigError::Invalid {
                key: k,
                message,
                line,
                ..
            }) => {
                assert_eq!(k, key, "{message}");
                assert!(message.contains(words), "{key}: {message}");
                assert!(line.is_some(), "{key}: no line");
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    let loopback = text
        .replace("https://idp.example.com", "http://127.0.0.1:5556")
        .replace("# allow_http = false", "allow_http = true");
    Config::from_toml(&path, &loopback).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn masking_rules_are_checked_with_the_key_named() {
    let (dir, text) = example_in_temp_dir("masking");
    let path = dir.join("example.toml");
    let cases = [
        (
            text.replace("hash_key = \"env:PATH\"", "# no key")
                .replace("strategy = \"email\"", "strategy = \"hash\""),
            "masking.hash_key",
            "needs a key",
        ),
        (
            text.replace(
                "table = \"public.customers\"",
                "table = \"public.cust'omers\"",
            ),
            "masking.rules[0].table",
            "not a plain name",
        ),
        (
            text.replace("strategy = \"email\"", "strategy = \"email\"\nkeep = 2"),
            "masking.rules[0].keep",
            "only the \"partial\" strategy",
        ),
        (
            text.replace("strategy = \"email\"", "strategy = \"scramble\""),
            "scramble",
            "unknown variant",
        ),
        (
            text.replace("\"phone\", \"iban\"", "\"phone\", \"passport\""),
            "passport",
            "unknown variant",
        ),
    ];
    for (bad, key, message) in cases {
        let err = Config::from_toml(&path, &bad).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(message), "{key}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
