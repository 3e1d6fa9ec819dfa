#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::time::{advance, Instant};

use super::window::{bucket_bounds, latency_bucket};
use super::*;

#[test]
fn config_defaults_follow_linkerd_and_validate() {
    let c = StatConfig::default();
    assert_eq!(c.window, Duration::from_secs(60));
    c.validate().unwrap();
    assert_eq!(
        StatConfig {
            window: Duration::from_secs(10),
            ..c.clone()
        }
        .validate(),
        Err(StatConfigError::WindowTooShort(Duration::from_secs(10)))
    );
    assert!(matches!(
        StatConfig {
            bucket: Duration::from_secs(7),
            ..c.clone()
        }
        .validate(),
        Err(StatConfigError::BucketMismatch { .. })
    ));
    assert!(matches!(
        StatConfig {
            window: Duration::from_secs(3600),
            bucket: Duration::from_secs(1)
        }
        .validate(),
        Err(StatConfigError::TooManyBuckets { .. })
    ));
}

#[test]
fn latency_buckets_contain_their_values() {
    for micros in [
        0u64,
        1,
        3,
        4,
        5,
        7,
        8,
        100,
        999,
        1000,
        1023,
        1024,
        65_432,
        9_999_999,
        100_000_000,
    ] {
        let idx = latency_bucket(Duration::from_micros(micros));
        let (lo, hi) = bucket_bounds(idx);
        assert!(
            lo <= micros as f64 && (micros as f64) < hi,
            "{micros}µs in [{lo}, {hi})"
        );
        assert!(hi / lo.max(1.0) <= 1.25 + 1e-9 || micros < 8);
    }
}

#[tokio::test(start_paused = true)]
async fn percentiles_success_and_rps_over_the_window() {
    let stats = Stats::new(StatConfig::default()).unwrap();
    let svc = stats.service("books");
    // 100 requests over 10 s: latencies 1..=100 ms, every 10th fails.
    for i in 1..=100u64 {
        svc.record(Duration::from_millis(i), i % 10 != 0);
        advance(Duration::from_millis(100)).await;
    }
    let row = &stats.rows()[0];
    assert_eq!(row.requests, 100);
    assert_eq!(row.success_rate, Some(0.9));
    assert!((row.rps - 10.0).abs() < 0.01, "rps {}", row.rps);
    let p50 = row.latency_p50_ms.unwrap();
    let p95 = row.latency_p95_ms.unwrap();
    let p99 = row.latency_p99_ms.unwrap();
    assert!((45.0..=56.0).contains(&p50), "p50 {p50}");
    assert!((85.0..=107.0).contains(&p95), "p95 {p95}");
    assert!((89.0..=112.0).contains(&p99), "p99 {p99}");
    assert!(p50 < p95 && p95 <= p99);
}

#[tokio::test(start_paused = true)]
async fn old_requests_leave_the_window() {
    let stats = Stats::new(StatConfig::default()).unwrap();
    let svc = stats.service("books");
    for _ in 0..50 {
        svc.record(Duration::from_millis(5), false);
    }
    advance(Duration::from_secs(30)).await;
    for _ in 0..30 {
        svc.record(Duration::from_millis(5), true);
    }
    let row = svc.row("books", Instant::now());
    assert_eq!(row.requests, 80);
    // After another 40 s the failures are older than the 60 s window (+ the current bucket).
    advance(Duration::from_secs(40)).await;
    let row = svc.row("books", Instant::now());
    assert_eq!(row.requests, 30);
    assert_eq!(row.success_rate, Some(1.0));
    assert!((row.rps - 0.5).abs() < 0.05, "rps {}", row.rps);
    advance(Duration::from_secs(120)).await;
    let row = svc.row("books", Instant::now());
    assert_eq!(row.requests, 0);
    assert_eq!(row.success_rate, None);
    assert_eq!(row.latency_p99_ms, None);
}

#[tokio::test(start_paused = true)]
async fn table_and_json_have_linkerd_columns() {
    let stats = Stats::new(StatConfig::default()).unwrap();
    stats.service("web").record(Duration::from_millis(12), true);
    stats.service("authors");
    advance(Duration::from_secs(2)).await;
    let table = stats.table();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99"
        ]
    );
    let authors: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(authors, ["authors", "-", "0.0rps", "-", "-", "-"]);
    let web: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(web[0], "web");
    assert_eq!(web[1], "100.00%");
    assert_eq!(web[2], "0.5rps");
    assert!(web[3].ends_with("ms"));
    let json = stats.to_json();
    assert_eq!(json["window_seconds"], 60.0);
    assert_eq!(json["rows"][1]["name"], "web");
    assert_eq!(json["rows"][1]["requests"], 1);
    assert_eq!(json["rows"][1]["success_rate"], 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_time_given_as_an_instant_or_as_clock_nanoseconds_lands_in_the_same_period() {
    let stats = Stats::new(StatConfig::default()).unwrap();
    let svc = stats.service("books");
    let start = Instant::now();
    svc.record_at(start, Duration::from_millis(5), false);
    svc.record_at_ns(
        mesh_balance::clock::nanos(start),
        Duration::from_millis(5),
        true,
    );
    let later = start + Duration::from_secs(70);
    svc.record_at_ns(
        mesh_balance::clock::nanos(later),
        Duration::from_millis(5),
        true,
    );
    advance(Duration::from_secs(1)).await;
    let row = svc.row("books", Instant::now());
    assert_eq!(row.requests, 2, "the two at the start, not the one 70 s on");
    assert_eq!(row.success_rate, Some(0.5));
    let row = svc.row("books", later);
    assert_eq!(row.requests, 1, "70 s on, only that one is in the window");
}
