//! Content detectors' throughput on text values: ordinary text (nothing found, the common
//! case: no copy) and text with sensitive values in it. Target: >= 100 MB/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgwarden::masking::{Detectors, Hits};

fn bench_detectors(c: &mut Criterion) {
    let detectors = Detectors::default();
    let clean = "Order 18342 shipped to the warehouse on 2026-11-27, 3 items, total 129.90 EUR; \
                 customer asked for gift wrapping and a delivery after 5 pm. "
        .repeat(16);
    let dirty = "Contact jane.doe@example.com or +44 20 7946 0958 about card 4242 4242 4242 4242; \
                 IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789. "
        .repeat(16);
    let mut group = c.benchmark_group("detectors");
    for (name, text) in [("clean", &clean), ("sensitive", &dirty)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut hits = Hits::default();
                detectors.mask(std::hint::black_box(text), b"key", &mut hits)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_detectors);
criterion_main!(benches);
