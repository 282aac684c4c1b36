//! Masking throughput.
//!
//! - `detectors`: the content detectors on text values: ordinary text (nothing found, the
//!   common case: no copy) and text with sensitive values in it. Target: >= 100 MB/s.
//! - `data_row`: rewriting DataRows of a five-column result (id, name, email, note, created):
//!   with no masked column and no detectors (the pass-through check: no copy), with a rule
//!   on `email` only, and with the detectors scanning the text columns.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgwarden::auth::{AuthMethod, Identity};
use pgwarden::masking::catalog::{Catalog, Masked};
use pgwarden::masking::rewrite::{Masking, Source};
use pgwarden::masking::{Detectors, Hits, Rule, Settings, Strategy};

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

const TABLE: u32 = 16_400;

/// RowDescription of (id int4, name text, email text, note text, created timestamptz).
fn row_description() -> Vec<u8> {
    let mut body = BytesMut::new();
    let columns: [(&str, i16, u32); 5] = [
        ("id", 1, 23),
        ("name", 2, 25),
        ("email", 3, 25),
        ("note", 4, 25),
        ("created", 5, 1184),
    ];
    body.put_i16(columns.len() as i16);
    for (name, attnum, type_oid) in columns {
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_u32(TABLE);
        body.put_i16(attnum);
        body.put_u32(type_oid);
        body.put_i16(-1);
        body.put_i32(-1);
        body.put_i16(0);
    }
    body.to_vec()
}

fn data_row(i: usize) -> Vec<u8> {
    let values = [
        i.to_string(),
        format!("Customer number {i}"),
        format!("customer.{i}@example.com"),
        "Prefers delivery after 5 pm; asked for gift wrapping on the last two orders.".into(),
        "2026-11-27 10:15:00+00".into(),
    ];
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for v in values {
        body.put_i32(v.len() as i32);
        body.put_slice(v.as_bytes());
    }
    body.to_vec()
}

fn masking(rules: bool, detectors: bool) -> Masking {
    let rule = Rule {
        schema: "public".into(),
        table: "customers".into(),
        column: "email".into(),
        strategy: Strategy::Email,
        exempt_groups: Vec::new(),
        exempt_users: Vec::new(),
        databases: Vec::new(),
    };
    let settings = Settings {
        rules: vec![rule],
        detectors: if detectors {
            Detectors::default()
        } else {
            Detectors::none()
        },
        ..Settings::default()
    };
    let mut columns = HashMap::new();
    // Without rules, the masked column is in another table: the result has none.
    let table = if rules { TABLE } else { TABLE + 1 };
    columns.insert(
        (table, 3),
        Masked {
            rule: 0,
            type_oid: 25,
        },
    );
    let identity = Identity {
        name: "dev".into(),
        groups: vec!["developers".into()],
        method: AuthMethod::LocalScram,
        oidc: None,
    };
    let mut masking = Masking::for_session(
        &settings,
        Arc::new(Catalog::with_masked_columns(
            settings.rules.clone(),
            columns,
        )),
        &identity,
    )
    .expect("masking applies");
    masking
        .on_row_description(&row_description(), Source::Unknown)
        .expect("a well-formed RowDescription");
    masking
}

fn bench_data_rows(c: &mut Criterion) {
    let rows: Vec<Vec<u8>> = (0..1000).map(data_row).collect();
    let bytes: usize = rows.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("data_row");
    group.throughput(Throughput::Bytes(bytes as u64));
    for (name, rules, detectors) in [
        ("pass_through", false, false),
        ("rules", true, false),
        ("detectors", false, true),
    ] {
        let mut masking = masking(rules, detectors);
        let mut out = BytesMut::with_capacity(bytes * 2);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let mut rewritten = 0;
                for row in &rows {
                    let changed = masking.data_row(std::hint::black_box(row), &mut out);
                    rewritten += usize::from(changed == Ok(true));
                }
                rewritten
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_detectors, bench_data_rows);
criterion_main!(benches);
