//! The soak through the proxy (`examples/soak.rs`), run here for a few seconds: backends killed
//! and restarted, the endpoint file rewritten and the configuration reloaded while keep-alive
//! clients call through a real mesh-proxy process.

#[path = "../examples/soak.rs"]
#[allow(dead_code, unreachable_pub)]
mod soak;
// The proxy harness inside the soak finds `crate::support` here.
use soak::support;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_through_the_proxy_fails_no_request_and_keeps_memory_flat() {
    let report = soak::run(soak::Settings {
        chaos: soak::chaos::Settings {
            duration: Duration::from_secs(6),
            kill_min: Duration::from_millis(300),
            kill_max: Duration::from_millis(700),
            loops: 4,
        },
        reload_every: Duration::from_millis(1500),
        rewrite_chance: 0.5,
        print_rss_every: None,
    })
    .await;
    let counts = &report.counts;
    eprintln!(
        "{report} (kills {}, rewrites {}, reloads {}, rss_max_mb {:.1})",
        counts.kills, report.rewrites, report.reloads, report.rss_max_mb
    );
    assert!(counts.kills >= 2, "the backends were shaken: {report:?}");
    assert!(
        report.rewrites >= 1,
        "the endpoint file was rewritten: {report:?}"
    );
    assert!(
        report.reloads >= 2,
        "the configuration was reloaded: {report:?}"
    );
    assert!(counts.requests >= 100, "{report:?}");
    assert_eq!(counts.failed, 0, "{:#?}", counts.failures);
    // Flat: a short run only shows a leak that grows per request; allow generous slack for the
    // allocator's arenas and the clients a reload replaces.
    assert!(
        report.rss_end_mb <= report.rss_start_mb * 1.5 + 8.0,
        "RSS grew from {:.1} MB to {:.1} MB",
        report.rss_start_mb,
        report.rss_end_mb
    );
}
