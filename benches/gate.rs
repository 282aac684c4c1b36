//! The statement gate's own cost: analysing a statement with libpg_query (uncached: a text
//! never seen; cached: the same text again, or the same shape with other literals) and
//! deciding it against the default policy (guardrails). Run: `cargo bench --bench gate`.

use criterion::{criterion_group, Criterion};
use pgwarden::policy::{Policy, Subject};
use pgwarden::sql::Analyzer;

const OLTP: &[(&str, &str)] = &[
    ("select by key", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213"),
    ("prepared select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    ("update", "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 48213"),
    (
        "insert",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 48213, -4321, CURRENT_TIMESTAMP)",
    ),
    (
        "join",
        "SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.created_at > now() - interval '1 day' ORDER BY o.id LIMIT 50",
    ),
];

fn bench_analysis(c: &mut Criterion) {
    let mut group = c.benchmark_group("analysis");
    for (name, sql) in OLTP {
        group.bench_function(format!("uncached {name}"), |b| {
            // A fresh analyzer each time: nothing cached.
            b.iter(|| {
                Analyzer::new(1)
                    .analyze(sql.as_bytes())
                    .map(|a| a.kinds.len())
            })
        });
        let analyzer = Analyzer::new(1024);
        let _ = analyzer.analyze(sql.as_bytes());
        group.bench_function(format!("cached, same text {name}"), |b| {
            b.iter(|| analyzer.analyze(sql.as_bytes()).map(|a| a.kinds.len()))
        });
        // The same shape with a literal never seen before: normalized, then found by shape
        // (each text is new, as in pgbench's simple mode).
        if sql.contains("48213") {
            let mut n = 0u64;
            group.bench_function(format!("cached shape, new literal {name}"), |b| {
                b.iter(|| {
                    n += 1;
                    let text = sql.replace("48213", &n.to_string());
                    analyzer.analyze(text.as_bytes()).map(|a| a.kinds.len())
                })
            });
        }
    }
    group.finish();
}

fn bench_decide(c: &mut Criterion) {
    let policy = Policy::default();
    let analyzer = Analyzer::new(64);
    let groups = vec!["dev".to_owned()];
    let subject = Subject {
        user: "alice",
        groups: &groups,
        database: "app",
        role: "app_rw",
        search_path: &[],
        has_intent: false,
        own_backends: &[],
    };
    let mut group = c.benchmark_group("decide");
    for (name, sql) in OLTP {
        let analysis = analyzer.analyze(sql.as_bytes()).expect("analysable");
        group.bench_function(format!("guardrails {name}"), |b| {
            b.iter(|| policy.decide(&subject, &analysis.statements).action)
        });
    }
    group.finish();
}

criterion_group!(benches, bench_analysis, bench_decide);

/// On a thread with the stack pgwarden's runtime threads have, so that analysis runs in
/// place as it does in the proxy (not on a freshly switched stack).
fn main() {
    let run = || {
        benches();
        criterion::Criterion::default()
            .configure_from_args()
            .final_summary();
    };
    let thread = std::thread::Builder::new()
        .stack_size(pgwarden::sql::WORKER_STACK)
        .spawn(run)
        .expect("bench thread");
    thread.join().expect("benchmarks");
}
