//! Audit log speed: sealing one record (hash chain), and the statement path end to end: one
//! client recording events the way a session records statements (`record_written`: sealed
//! and written before the call returns; with `fsync = "always"` also fsynced), and their
//! outcomes (`record_later`: sealed now, written with the next record).
//! Run: `cargo bench --bench audit`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgwarden::audit::event::{Endpoint, Event};
use pgwarden::audit::record::{prepare, seal, GENESIS};
use pgwarden::audit::{AuditLog, FsyncPolicy, Settings};

fn event(i: u64) -> Event {
    Event::AuthFailure {
        session: i,
        user: format!("user-{i}"),
        actor: None,
        src_endpoint: Endpoint {
            ip: "10.1.2.3".into(),
            port: 50_000,
        },
        database: "app".into(),
        reason: "invalid_credentials".into(),
    }
}

fn bench_seal(c: &mut Criterion) {
    let e = event(1);
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal one record", |b| {
        b.iter(|| {
            let prepared = prepare(e.ocsf(), &e).expect("serializable");
            seal(42, 1_795_761_930_000, GENESIS, &prepared).0.len()
        })
    });
    group.finish();
}

fn bench_writer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("audit writer");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(10);
    for (policy, name, batch) in [
        (FsyncPolicy::Batch, "batch", 10_000u64),
        (FsyncPolicy::Always, "always", 200),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "pgwarden-bench-audit-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = Settings {
            fsync: policy,
            ..Settings::new(dir.clone())
        };
        let (log, thread) = AuditLog::open(settings).expect("open audit log");
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("record_written + flush, fsync = {name}"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    for i in 0..batch {
                        log.record_written(event(i)).await.expect("record");
                    }
                    log.flush().await.expect("flush");
                })
            })
        });
        group.bench_function(
            format!("record_written + record_later pairs, fsync = {name}"),
            |b| {
                b.iter(|| {
                    runtime.block_on(async {
                        for i in 0..batch / 2 {
                            log.record_written(event(i)).await.expect("record");
                            log.record_later(event(i));
                        }
                        log.flush().await.expect("flush");
                    })
                })
            },
        );
        drop(log);
        let _ = thread.join();
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

criterion_group!(benches, bench_seal, bench_writer);
criterion_main!(benches);
