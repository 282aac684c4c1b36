//! Records the git revision pgwarden is built from, for `pgwarden --version` and the audit
//! log's `proxy.start` record. `PGWARDEN_GIT_REV` overrides it (container builds, where the
//! source has no `.git`); without either it is "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PGWARDEN_GIT_REV");
    let rev = std::env::var("PGWARDEN_GIT_REV")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(git_rev)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PGWARDEN_GIT_REV={}", rev.trim());

    // Rebuild the revision when HEAD moves: HEAD itself (checkouts), the branch it points to
    // (commits), and packed refs.
    let git = Path::new(".git");
    if git.is_dir() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        println!("cargo:rerun-if-changed=.git/packed-refs");
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
            if let Some(reference) = head.strip_prefix("ref: ") {
                println!("cargo:rerun-if-changed=.git/{}", reference.trim());
            }
        }
    }
}

fn git_rev() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|r| !r.is_empty())
}
