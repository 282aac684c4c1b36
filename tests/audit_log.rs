//! The audit log's files: written by the real writer, checked by `audit verify` logic, and
//! tampered with in every way a reviewer must catch.

use std::path::{Path, PathBuf};

use pgwarden::audit::checkpoint::{PublicKey, SigningKey};
use pgwarden::audit::event::{Endpoint, Event};
use pgwarden::audit::verify::{verify_dir, verify_dir_with};
use pgwarden::audit::{list_files, AuditLog, Settings};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgwarden-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn settings(dir: &Path) -> Settings {
    // Small files so that a few hundred records span several of them.
    Settings {
        rotate_size: 8 * 1024,
        ..Settings::new(dir.to_owned())
    }
}

fn failure(i: usize) -> Event {
    Event::AuthFailure {
        session: i as u64,
        user: format!("user-{i}"),
        actor: None,
        src_endpoint: Endpoint {
            ip: "127.0.0.1".into(),
            port: 40_000 + (i % 1000) as u16,
        },
        database: "app".into(),
        reason: "invalid_password".into(),
    }
}

/// Write `count` events with a fresh writer (continuing whatever `dir` holds).
async fn write_events(dir: &Path, range: std::ops::Range<usize>) {
    let (log, thread) = AuditLog::open(settings(dir)).unwrap();
    for i in range {
        log.record(failure(i)).await.unwrap();
    }
    log.flush().await.unwrap();
    drop(log);
    thread.join().unwrap();
}

fn copy_dir(from: &Path, name: &str) -> PathBuf {
    let to = temp_dir(name);
    for file in list_files(from).unwrap() {
        std::fs::copy(from.join(&file), to.join(&file)).unwrap();
    }
    to
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

/// A clean log of 300 events over at least 3 files, written by two writer runs.
async fn clean_log(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    write_events(&dir, 0..150).await;
    write_events(&dir, 150..300).await;
    dir
}

#[tokio::test]
async fn an_untouched_log_verifies_clean_across_rotated_files() {
    let dir = clean_log("clean").await;
    let files = list_files(&dir).unwrap();
    assert!(files.len() >= 3, "expected rotation, got {files:?}");
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // 300 events plus one file.start per file.
    assert_eq!(report.records, 300 + files.len() as u64);
    assert_eq!(report.first_seq, Some(1));
    assert_eq!(report.last_seq, Some(report.records));
    // Secrets cannot be there, but the claimed user and the reason are.
    let text = std::fs::read_to_string(dir.join(&files[0])).unwrap();
    assert!(text.contains("\"type\":\"auth.failure\"") && text.contains("\"class_uid\":3002"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Audit files hold who ran what from where: never readable by every local user, whatever
/// the umask. A directory pgwarden creates is its own (and its group's) too.
#[tokio::test]
async fn the_log_is_not_readable_by_other_local_users() {
    use std::os::unix::fs::PermissionsExt;
    let parent = temp_dir("modes");
    let dir = parent.join("nested").join("audit");
    write_events(&dir, 0..50).await;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    // Under the usual umask 022: rwxr-x--- and rw-r-----; a stricter one only takes more.
    for created in [parent.join("nested"), dir.clone()] {
        let mode = mode(&created);
        assert!(mode & 0o027 == 0 && mode & 0o700 == 0o700, "{mode:o}");
    }
    let files = list_files(&dir).unwrap();
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let mode = mode(&dir.join(&file));
        assert!(
            mode & 0o137 == 0 && mode & 0o600 == 0o600,
            "{file}: {mode:o}"
        );
    }
    std::fs::remove_dir_all(parent).unwrap();
}

#[tokio::test]
async fn every_kind_of_tampering_is_detected_with_its_place() {
    let clean = clean_log("tamper").await;
    let files = list_files(&clean).unwrap();
    let middle = &files[1];

    // One changed byte in a record.
    let dir = copy_dir(&clean, "byte");
    let mut content = lines(&dir.join(middle));
    content[3] = content[3].replacen("user-", "usex-", 1);
    write_lines(&dir.join(middle), &content);
    let report = verify_dir(&dir).unwrap();
    assert_eq!(report.problems[0].file, *middle);
    assert_eq!(report.problems[0].line, 4);
    assert!(
        report.problems[0].message.contains("altered"),
        "{}",
        report.problems[0]
    );

    // A deleted record.
    let dir = copy_dir(&clean, "deleted");
    let mut content = lines(&dir.join(middle));
    content.remove(5);
    write_lines(&dir.join(middle), &content);
    let report = verify_dir(&dir).unwrap();
    assert_eq!(
        (report.problems[0].file.as_str(), report.problems[0].line),
        (middle.as_str(), 6)
    );
    assert!(
        report.problems[0].message.contains("missing"),
        "{}",
        report.problems[0]
    );

    // Two records swapped.
    let dir = copy_dir(&clean, "swapped");
    let mut content = lines(&dir.join(middle));
    content.swap(4, 5);
    write_lines(&dir.join(middle), &content);
    let report = verify_dir(&dir).unwrap();
    assert_eq!(report.problems[0].line, 5);
    assert!(
        report.problems[0].message.contains("reordered")
            && report.problems[0].message.contains("at line 6"),
        "{}",
        report.problems[0]
    );

    // A record repeated.
    let dir = copy_dir(&clean, "repeated");
    let mut content = lines(&dir.join(middle));
    content.insert(5, content[4].clone());
    write_lines(&dir.join(middle), &content);
    let report = verify_dir(&dir).unwrap();
    assert_eq!(report.problems[0].line, 6);
    assert!(
        report.problems[0]
            .message
            .contains(&format!("a copy of the record at {middle}:5")),
        "{}",
        report.problems[0]
    );

    // A deleted middle file.
    let dir = copy_dir(&clean, "middle");
    std::fs::remove_file(dir.join(middle)).unwrap();
    let report = verify_dir(&dir).unwrap();
    assert_eq!(
        (report.problems[0].file.as_str(), report.problems[0].line),
        (files[2].as_str(), 1)
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("file is missing")),
        "{:?}",
        report.problems
    );

    // The first file deleted: the log starts mid-chain.
    let dir = copy_dir(&clean, "first");
    std::fs::remove_file(dir.join(&files[0])).unwrap();
    let report = verify_dir(&dir).unwrap();
    assert!(
        report.problems[0]
            .message
            .contains("earlier files are missing"),
        "{}",
        report.problems[0]
    );

    // A truncated tail (cut in the middle of a record).
    let dir = copy_dir(&clean, "truncated");
    let last = files.last().unwrap();
    let bytes = std::fs::read(dir.join(last)).unwrap();
    std::fs::write(dir.join(last), &bytes[..bytes.len() - 20]).unwrap();
    let report = verify_dir(&dir).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.file == *last && p.message.contains("partial record")),
        "{:?}",
        report.problems
    );

    std::fs::remove_dir_all(clean).unwrap();
}

#[tokio::test]
async fn a_crash_mid_write_is_sealed_and_the_chain_continues() {
    let dir = temp_dir("crash");
    write_events(&dir, 0..50).await;
    // Simulate a crash during a write: half a record at the end of the newest file.
    let last = list_files(&dir).unwrap().pop().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(&last))
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"seq\":999,\"time\":1,\"prev_ha").unwrap();
    drop(file);
    // Restart: the partial line is sealed and reported, not merged into the next record.
    write_events(&dir, 50..60).await;
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(report.notes[0].message.contains("crash"));
    let newest = list_files(&dir).unwrap().pop().unwrap();
    let text = std::fs::read_to_string(dir.join(newest)).unwrap();
    assert!(
        text.contains("\"type\":\"log.recovered\"") && text.contains("\"torn_bytes\":28"),
        "{text}"
    );
    // The excuse covers exactly that line: another line in its place (another length), or
    // a second unchecked line before it, is a problem.
    let original = std::fs::read_to_string(dir.join(&last)).unwrap();
    let partial = "{\"seq\":999,\"time\":1,\"prev_ha";
    for forged in [
        original.replace(partial, "{\"type\":\"statement\",\"actor\":\"bob\"}"),
        original.replace(partial, &format!("{{\"type\":\"statement\"}}\n{partial}")),
    ] {
        std::fs::write(dir.join(&last), &forged).unwrap();
        let report = verify_dir(&dir).unwrap();
        assert!(!report.is_clean(), "{:?}", report.notes);
    }
    std::fs::write(dir.join(&last), original).unwrap();
    assert!(verify_dir(&dir).unwrap().is_clean());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Rewrite a log the way an attacker with write access would: change `edit`ed lines, then
/// recompute every hash and prev_hash so the chain is consistent again. Only a signature can
/// tell.
fn rechain(dir: &Path, fix_checkpoints: bool, edit: impl Fn(&str) -> String) {
    use sha2::Digest;
    let mut prev = pgwarden::audit::record::GENESIS.to_owned();
    for file in list_files(dir).unwrap() {
        let mut out = Vec::new();
        for line in lines(&dir.join(&file)) {
            let body = &line[..line.len() - 75];
            let old_prev = body.split("\"prev_hash\":\"").nth(1).unwrap()[..64].to_owned();
            let mut body = edit(&body.replacen(&old_prev, &prev, 1));
            if fix_checkpoints && body.contains("\"type\":\"checkpoint\"") {
                let old = body.split("\"covers_hash\":\"").nth(1).unwrap()[..64].to_owned();
                body = body.replacen(&old, &prev, 1);
            }
            let hash = pgwarden::audit::record::hex(&sha2::Sha256::digest(format!("{body}}}")));
            out.push(format!("{body},\"hash\":\"{hash}\"}}"));
            prev = hash;
        }
        write_lines(&dir.join(&file), &out);
    }
}

#[tokio::test]
async fn signed_checkpoints_catch_a_rewritten_chain_and_bound_the_unsigned_tail() {
    let dir = temp_dir("signed");
    let pem = SigningKey::generate_pem().unwrap();
    let key = SigningKey::from_pem(&pem).unwrap();
    let public = PublicKey::parse(&key.public_key()).unwrap();
    let mut signed = settings(&dir);
    signed.signing_key = Some(pgwarden::config::Secret::resolve(&pem, &dir).unwrap().0);
    let (log, thread) = AuditLog::open(signed).unwrap();
    for i in 0..100 {
        log.record(failure(i)).await.unwrap();
        if i == 49 || i == 89 {
            log.checkpoint().await.unwrap();
        }
    }
    log.flush().await.unwrap();
    drop(log);
    thread.join().unwrap();

    let report = verify_dir_with(&dir, std::slice::from_ref(&public), &[]).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.checkpoints, 2);
    // The ten events after the second checkpoint (plus any file.start among them).
    assert!(
        (10..=12).contains(&report.unsigned_tail),
        "{}",
        report.unsigned_tail
    );

    // Someone with write access changes a record and recomputes the whole chain.
    let forged = copy_dir(&dir, "forged");
    rechain(&forged, false, |body| {
        body.replace("\"user-7\"", "\"user-X\"")
    });
    // The checkpoints still name the old hashes.
    let report = verify_dir(&forged).unwrap();
    assert!(
        report.problems[0].message.contains("does not cover"),
        "{:?}",
        report.problems
    );

    // ... and also rewrites what the checkpoints claim to cover: the signature fails.
    let forged = copy_dir(&dir, "forged2");
    rechain(&forged, true, |body| {
        body.replace("\"user-7\"", "\"user-X\"")
    });
    assert!(
        verify_dir(&forged).unwrap().is_clean(),
        "without the key the rewrite is consistent"
    );
    let report = verify_dir_with(&forged, std::slice::from_ref(&public), &[]).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("signature is invalid")),
        "{:?}",
        report.problems
    );

    // A log signed with someone else's key is not accepted either.
    let other = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
    let other_public = PublicKey::parse(&other.public_key()).unwrap();
    let report = verify_dir_with(&dir, std::slice::from_ref(&other_public), &[]).unwrap();
    assert!(
        report.problems[0].message.contains("another key"),
        "{:?}",
        report.problems
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_checkpoint_that_starts_a_new_file_signs_its_file_start() {
    // A checkpoint after every record: some of them fall due when the file is full, and
    // the file.start the rotation writes first is the record they must sign.
    let dir = temp_dir("checkpoint-rotation");
    let pem = SigningKey::generate_pem().unwrap();
    let public = PublicKey::parse(&SigningKey::from_pem(&pem).unwrap().public_key()).unwrap();
    let mut signed = settings(&dir);
    signed.signing_key = Some(pgwarden::config::Secret::resolve(&pem, &dir).unwrap().0);
    let (log, thread) = AuditLog::open(signed).unwrap();
    for i in 0..120 {
        // Records of varying length, so that rotations fall due at checkpoints too.
        let mut event = failure(i);
        if let Event::AuthFailure { user, .. } = &mut event {
            user.push_str(&"x".repeat(i % 11 * 7));
        }
        log.record(event).await.unwrap();
        log.checkpoint().await.unwrap();
    }
    log.flush().await.unwrap();
    drop(log);
    thread.join().unwrap();
    let first_records: Vec<String> = list_files(&dir)
        .unwrap()
        .iter()
        .map(|name| lines(&dir.join(name))[1].clone())
        .collect();
    assert!(
        first_records.iter().any(|r| r.contains("\"checkpoint\"")),
        "no file starts with a checkpoint after its file.start: the case is not exercised"
    );
    let report = verify_dir_with(&dir, std::slice::from_ref(&public), &[]).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.checkpoints, 120);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_batch_window_groups_records_and_loses_none() {
    let dir = temp_dir("window");
    let mut windowed = settings(&dir);
    windowed.batch_window = std::time::Duration::from_millis(20);
    let (log, thread) = AuditLog::open(windowed).unwrap();
    for i in 0..50 {
        log.record_durable(failure(i)).await.unwrap();
    }
    drop(log);
    thread.join().unwrap();
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.records - list_files(&dir).unwrap().len() as u64, 50);
    std::fs::remove_dir_all(dir).unwrap();
}

/// One run of a signing pgwarden as the log sees it: start, `events` failed logins, and,
/// if `stop`, a stop with its final checkpoint; else (killed) the records just end.
async fn signed_run(dir: &Path, pem: &str, events: std::ops::Range<usize>, stop: bool) {
    let mut signed = settings(dir);
    signed.signing_key = Some(pgwarden::config::Secret::resolve(pem, dir).unwrap().0);
    let (log, thread) = AuditLog::open(signed).unwrap();
    log.record(Event::ProxyStart {
        version: "test".into(),
        listen: "127.0.0.1:6432".into(),
        first_session: 1,
    })
    .await
    .unwrap();
    let middle = events.start + events.len() / 2;
    for i in events {
        log.record(failure(i)).await.unwrap();
        if i == middle {
            log.checkpoint().await.unwrap();
        }
    }
    if stop {
        log.record(Event::ProxyStop {
            reason: "SIGTERM".into(),
        })
        .await
        .unwrap();
        log.checkpoint().await.unwrap();
    }
    log.flush().await.unwrap();
    drop(log);
    thread.join().unwrap();
}

/// Records after a run's last checkpoint that a restart chained onto (a kill, or records
/// appended while pgwarden was stopped), and a stop without its final checkpoint, are
/// pointed out: the later signatures cover them, but vouch for nothing the run did not
/// sign itself.
#[tokio::test]
async fn records_no_run_signed_are_pointed_out_even_when_a_later_checkpoint_covers_them() {
    let dir = temp_dir("unsigned-runs");
    let pem = SigningKey::generate_pem().unwrap();
    let public = PublicKey::parse(&SigningKey::from_pem(&pem).unwrap().public_key()).unwrap();
    signed_run(&dir, &pem, 0..20, true).await;
    let report = verify_dir_with(&dir, std::slice::from_ref(&public), &[]).unwrap();
    assert!(
        report.is_clean() && report.warnings.is_empty(),
        "{report:?}"
    );

    // Killed after its mid-run checkpoint: ten records nobody signed, then a restart.
    signed_run(&dir, &pem, 20..40, false).await;
    signed_run(&dir, &pem, 40..60, true).await;
    let report = verify_dir_with(&dir, std::slice::from_ref(&public), &[]).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let warning = &report.warnings[0];
    assert!(warning.message.contains("were never signed"), "{warning}");
    let line = &lines(&dir.join(&warning.file))[warning.line - 1];
    assert!(
        line.contains("\"user-31\""),
        "points at the first unsigned record: {line}"
    );

    // The final checkpoint removed (with whatever the run did last): the stop is alone.
    let cut = copy_dir(&dir, "unsigned-runs-cut");
    let last = list_files(&cut).unwrap().pop().unwrap();
    let mut kept = lines(&cut.join(&last));
    assert!(kept.pop().unwrap().contains("\"checkpoint\""));
    write_lines(&cut.join(&last), &kept);
    let report = verify_dir_with(&cut, std::slice::from_ref(&public), &[]).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.message.contains("no checkpoint follows")),
        "{:?}",
        report.warnings
    );

    // The CLI says so, and fails with --strict.
    let verify = |dir: &Path, strict: bool| {
        let key = dir
            .join("..")
            .join(format!("unsigned-runs-{}.pub", std::process::id()));
        std::fs::write(&key, SigningKey::from_pem(&pem).unwrap().public_key()).unwrap();
        let mut args = vec![
            "audit".to_owned(),
            "verify".into(),
            dir.display().to_string(),
        ];
        args.extend(["--pubkey".into(), key.display().to_string()]);
        if strict {
            args.push("--strict".into());
        }
        std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(&args)
            .output()
            .unwrap()
    };
    let out = verify(&cut, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: ") && stdout.contains("warning(s) above"),
        "{stdout}"
    );
    assert_eq!(verify(&cut, true).status.code(), Some(1));
    std::fs::remove_dir_all(cut).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// After a key rotation, both keys verify the log; one alone does not.
#[tokio::test]
async fn a_log_signed_with_two_keys_verifies_with_both() {
    let dir = temp_dir("rotated-keys");
    let old = SigningKey::generate_pem().unwrap();
    let new = SigningKey::generate_pem().unwrap();
    let public =
        |pem: &str| PublicKey::parse(&SigningKey::from_pem(pem).unwrap().public_key()).unwrap();
    signed_run(&dir, &old, 0..10, true).await;
    signed_run(&dir, &new, 10..20, true).await;
    let report = verify_dir_with(&dir, &[public(&old)], &[]).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("another key")),
        "{:?}",
        report.problems
    );
    let report = verify_dir_with(&dir, &[public(&old), public(&new)], &[]).unwrap();
    assert!(
        report.is_clean() && report.warnings.is_empty(),
        "{report:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// An empty directory is not a clean log; an emptied file is named as such.
#[tokio::test]
async fn no_files_and_an_emptied_file_are_problems() {
    let dir = temp_dir("no-files");
    let report = verify_dir(&dir).unwrap();
    assert!(
        report.problems[0].message.contains("no audit files"),
        "{:?}",
        report.problems
    );
    std::fs::remove_dir_all(dir).unwrap();

    let dir = clean_log("emptied").await;
    let files = list_files(&dir).unwrap();
    assert!(files.len() >= 3);
    std::fs::write(dir.join(&files[1]), "").unwrap();
    let report = verify_dir(&dir).unwrap();
    assert!(
        report.problems.iter().any(|p| p
            .message
            .contains(&format!("{} is empty: its records were removed", files[1]))),
        "{:?}",
        report.problems
    );
    std::fs::remove_dir_all(dir).unwrap();
}
