//! What operators read stays true: the configuration reference (README.md) documents every
//! key the code accepts — each field of each config struct must appear in the reference
//! table, so adding a key without documenting it fails here — and the deployment files in
//! `deploy/` are valid.

use std::collections::BTreeMap;
use std::path::Path;

/// Config structs and where they live in the TOML file (`[[x]]`: an array of tables).
const SECTIONS: &[(&str, &str)] = &[
    ("ConfigFile", ""),
    ("ServerSection", "server"),
    ("TlsSection", "server.tls"),
    ("LimitsSection", "server.limits"),
    ("UpstreamSection", "upstream"),
    ("UpstreamRole", "[[upstream.roles]]"),
    ("AuthSection", "auth"),
    ("RateLimitSection", "auth.rate_limit"),
    ("OidcSection", "[[auth.oidc]]"),
    ("LocalUserSection", "[[auth.local]]"),
    ("AccessRule", "[[access]]"),
    ("AuditSection", "audit"),
    ("PolicySection", "policy"),
    ("RuleSpec", "[[policy.rules]]"),
    ("SessionSpec", "[[policy.session]]"),
    ("AdminSection", "admin"),
    ("AdminTlsSection", "admin.tls"),
    ("BreakGlassSection", "[[admin.break_glass]]"),
    ("ApprovalsSection", "approvals"),
    ("MaskingSection", "masking"),
    ("MaskingRuleSection", "[[masking.rules]]"),
    ("DetectorsSection", "masking.detectors"),
];

const SOURCES: &[&str] = &[
    "src/config/model.rs",
    "src/policy/rule.rs",
    "src/policy/session.rs",
];

/// Deserialize structs of a source file: name → TOML field names.
fn structs(source: &str) -> BTreeMap<String, Vec<String>> {
    let mut found = BTreeMap::new();
    let lines: Vec<&str> = source.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let derives_deserialize =
            lines[i].trim_start().starts_with("#[derive(") && lines[i].contains("Deserialize");
        i += 1;
        if !derives_deserialize {
            continue;
        }
        // Skip further attributes to the item.
        while i < lines.len() && lines[i].trim_start().starts_with("#[") {
            i += 1;
        }
        let Some(item) = lines.get(i) else { break };
        let item = item.trim_start().trim_start_matches("pub ");
        let Some(name) = item
            .strip_prefix("struct ")
            .and_then(|rest| rest.split([' ', '{', '(']).next())
        else {
            continue;
        };
        let mut fields = Vec::new();
        let mut rename = None;
        i += 1;
        while i < lines.len() && lines[i].trim() != "}" {
            let line = lines[i].trim();
            if let Some(r) = line
                .split("rename = \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            {
                rename = Some(r.to_owned());
            }
            if !line.starts_with("//") && !line.starts_with("#[") {
                let line = line.trim_start_matches("pub ");
                if let Some((field, ty)) = line.split_once(':') {
                    let field = field.trim();
                    let nested = SECTIONS.iter().any(|(s, _)| ty.contains(s));
                    if !nested && field.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        fields.push(rename.take().unwrap_or_else(|| field.to_owned()));
                    }
                    rename = None;
                }
            }
            i += 1;
        }
        found.insert(name.to_owned(), fields);
    }
    found
}

#[test]
fn every_config_key_is_in_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    // First cells of the reference table's rows.
    let cells: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split(" | ").next())
        .collect();
    assert!(cells.len() > 40, "no reference table found in README.md");
    let mut missing = Vec::new();
    let mut unmapped = Vec::new();
    let mut checked = 0;
    for source in SOURCES {
        let text = std::fs::read_to_string(root.join(source)).unwrap();
        for (name, fields) in structs(&text) {
            let Some((_, prefix)) = SECTIONS.iter().find(|(s, _)| *s == name) else {
                // Deserialize structs that are not sections (e.g. a value's inner shape)
                // must be listed here too, with an empty prefix if they have no keys.
                unmapped.push(format!("{source}: {name}"));
                continue;
            };
            for field in fields {
                checked += 1;
                let documented = cells.iter().any(|cell| {
                    if prefix.starts_with("[[") {
                        cell.contains(&format!("`{prefix}`"))
                            && cell.contains(&format!("`{field}`"))
                    } else {
                        cell.contains(&format!("`{prefix}.{field}`"))
                            || (cell.contains(&format!("`{prefix}."))
                                && cell.contains(&format!("`{field}`")))
                    }
                });
                if !documented {
                    missing.push(if prefix.starts_with("[[") {
                        format!("{prefix} {field}")
                    } else {
                        format!("{prefix}.{field}")
                    });
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} keys found: is the parser still right?"
    );
    assert!(
        unmapped.is_empty(),
        "config structs the reference test does not know (add them to SECTIONS): {unmapped:?}"
    );
    assert!(
        missing.is_empty(),
        "config keys missing from README.md's configuration reference: {missing:#?}"
    );
}

/// Every metric pgwarden registers is in README.md's monitoring table.
#[test]
fn every_metric_is_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let source = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    // `registry.register(` is followed by the name on its own line or on the same one.
    let names: Vec<&str> = source
        .split("registry.register(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    assert!(
        names.len() >= 15,
        "found only {names:?}: is the parser still right?"
    );
    // First cells of the table's rows.
    let cells: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("| `pgwarden_"))
        .filter_map(|l| l.split(" | ").next())
        .map(|cell| cell.trim_start_matches('`'))
        .collect();
    let missing: Vec<&&str> = names
        .iter()
        .filter(|name| {
            !cells.iter().any(|cell| {
                let cell = format!("`pgwarden_{cell}");
                cell.contains(&format!("`pgwarden_{name}`"))
                    || cell.contains(&format!("`pgwarden_{name}_total`"))
                    || cell.contains(&format!("`pgwarden_{name}{{"))
                    || cell.contains(&format!("`pgwarden_{name}_total{{"))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from README.md: {missing:?}"
    );
}

/// The systemd unit in deploy/ is one systemd accepts (when systemd-analyze is installed).
#[test]
fn the_systemd_unit_verifies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(status) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not installed: the unit is not verified here");
        return;
    };
    assert!(status.status.success());
    let unit = std::fs::read_to_string(root.join("deploy/pgwarden.service")).unwrap();
    // The unit names the installed binary; verify it against the one just built.
    let unit = unit.replace("/usr/local/bin/pgwarden", env!("CARGO_BIN_EXE_pgwarden"));
    let dir = std::env::temp_dir().join(format!("pgwarden-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgwarden.service");
    std::fs::write(&path, unit).unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let messages = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && messages.trim().is_empty(),
        "{messages}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Run a program; its output when it succeeded, else a panic with everything it said.
fn run_ok(program: &str, args: &[&str], envs: &[(&str, &str)], dir: &Path) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); scripts/deps.sh installs what the tests need")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{said}"
    );
    said
}

/// The scripts in deploy/ and scripts/ pass shellcheck.
#[test]
fn shell_scripts_pass_shellcheck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts = Vec::new();
    for dir in ["deploy/compose", "scripts", "benches", ".ci"] {
        for entry in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if path.extension().is_some_and(|e| e == "sh") || text.starts_with("#!/") {
                scripts.push(path.to_string_lossy().into_owned());
            }
        }
    }
    assert!(scripts.len() >= 5, "{scripts:?}");
    let args: Vec<&str> = scripts.iter().map(String::as_str).collect();
    run_ok("shellcheck", &args, &[], root);
}

/// docker-compose.yml passes the compose-spec schema (dclint, installed from npm under
/// target/ when missing), and the config pgwarden runs with in it is valid — with the
/// certificates the compose demo's own script makes. There is no Docker engine here: this is
/// what can be checked without one.
#[test]
fn the_compose_demo_files_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tools = root.join("target/tools");
    let dclint = tools.join("node_modules/.bin/dclint");
    if !dclint.exists() {
        std::fs::create_dir_all(&tools).unwrap();
        run_ok(
            "npm",
            &[
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                tools.to_str().unwrap(),
                "dclint@3.1.0",
            ],
            &[],
            root,
        );
    }
    run_ok(
        dclint.to_str().unwrap(),
        &["-q", "docker-compose.yml"],
        &[],
        root,
    );

    // The certificates, made by the script the `certs` service runs.
    let dir = std::env::temp_dir().join(format!("pgwarden-compose-{}", std::process::id()));
    let certs = dir.join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    run_ok(
        "sh",
        &["deploy/compose/make-certs.sh"],
        &[("CERTS_DIR", certs.to_str().unwrap())],
        root,
    );
    for file in [
        "ca.pem",
        "keycloak.pem",
        "keycloak.key",
        "pgwarden.pem",
        "pgwarden.key",
    ] {
        assert!(certs.join(file).exists(), "{file} not made");
    }
    // pgwarden's compose config, with the paths of this machine.
    let config = std::fs::read_to_string(root.join("deploy/compose/pgwarden.toml"))
        .unwrap()
        .replace("/certs/", &format!("{}/", certs.display()))
        .replace(
            "/var/lib/pgwarden/audit",
            dir.join("audit").to_str().unwrap(),
        );
    let config_path = dir.join("pgwarden.toml");
    std::fs::write(&config_path, config).unwrap();
    run_ok(
        env!("CARGO_BIN_EXE_pgwarden"),
        &["check-config", "--config", config_path.to_str().unwrap()],
        &[
            ("APP_RW_PASSWORD", "x"),
            ("APP_RO_PASSWORD", "y"),
            ("PGWARDEN_MASKING_KEY", "a-masking-key-of-some-length"),
        ],
        root,
    );

    // The Keycloak realm gives the people the groups pgwarden's config names.
    let realm: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/compose/keycloak/pgwarden-realm.json")).unwrap(),
    )
    .unwrap();
    let groups_of = |user: &str| -> Vec<String> {
        realm["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == user)
            .unwrap()["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap().trim_start_matches('/').to_owned())
            .collect()
    };
    assert_eq!(groups_of("dev"), ["developers"]);
    assert_eq!(groups_of("dba"), ["dba", "pii-readers"]);
    let client = &realm["clients"][0];
    assert_eq!(client["clientId"], "pgwarden-cli");
    assert_eq!(
        client["attributes"]["oauth2.device.authorization.grant.enabled"],
        "true"
    );

    // The image builds what the Dockerfile copies.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let sources: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &sources[..sources.len() - 1] {
            assert!(
                root.join(source).exists(),
                "the Dockerfile copies {source}, which is missing"
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
