//! Per-service SUCCESS, RPS and latency percentiles over a sliding window, as `linkerd viz stat`
//! shows them.
//!
//! # What it reports
//! For each service (a route on a client, the application on a server): the success rate, the
//! request rate and the p50/p95/p99 latency over the last [`StatConfig::window`] — by default
//! **1 minute**, the default of `linkerd viz stat --time-window` (which refuses windows under 15 s,
//! as [`StatConfig::validate`] does). [`Stats::table`] prints the columns `linkerd viz stat` prints
//! (NAME, SUCCESS, RPS, LATENCY_P50, LATENCY_P95, LATENCY_P99) and [`Stats::to_json`] gives the
//! same rows for the admin API.
//!
//! # Why a ring of time buckets
//! Linkerd computes these numbers in Prometheus (`rate()` and `histogram_quantile()` over the
//! window). A library that links into the application has no Prometheus to ask, so each service
//! keeps the window itself: a ring of time buckets (default 5 s each, 12 covering the minute plus
//! the one being filled), each holding atomic success and failure counts and a fixed log-scale
//! latency histogram (four buckets per power of two, from 1 µs to about 2 minutes, so a
//! percentile is off by at most about 12 %). Recording a request is a few relaxed atomic adds; a
//! bucket is reset by the first request that reaches it in a new period (a compare-and-swap on
//! its period number), so no lock is held on the request path. The price of that is that a
//! request recorded at the very moment its bucket turns over may be lost, which a one-minute
//! rate does not notice.
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::stat::{StatConfig, Stats};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let stats = Stats::new(StatConfig::default()).expect("default config is valid");
//! let books = stats.service("books");
//! books.record(Duration::from_millis(20), true);
//! books.record(Duration::from_millis(40), false);
//! let rows = stats.rows();
//! assert_eq!(rows[0].name, "books");
//! assert_eq!(rows[0].success_rate, Some(0.5));
//! println!("{}", stats.table());
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Serialize;
use tokio::time::Instant;

mod window;

pub use self::window::ServiceStats;

/// Configuration of the stat windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatConfig {
    /// How far back the numbers look. Default 60 s (`linkerd viz stat`'s default); at least 15 s.
    pub window: Duration,
    /// Width of one time bucket. Default 5 s; the window must be a whole number of buckets, at
    /// most 600 of them.
    pub bucket: Duration,
}

/// Why a [`StatConfig`] is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatConfigError {
    /// The window is shorter than 15 s.
    #[error("stat window {0:?} is shorter than the 15s minimum")]
    WindowTooShort(Duration),
    /// The bucket width is zero or does not divide the window.
    #[error("stat bucket {bucket:?} must be non-zero and divide the window {window:?}")]
    BucketMismatch {
        /// The configured bucket width.
        bucket: Duration,
        /// The configured window.
        window: Duration,
    },
    /// More than 600 buckets.
    #[error("stat window {window:?} / bucket {bucket:?} gives {count} buckets, more than 600")]
    TooManyBuckets {
        /// The configured window.
        window: Duration,
        /// The configured bucket width.
        bucket: Duration,
        /// Buckets that would be needed.
        count: u128,
    },
}

/// The stat windows of every service. Cloning shares them.
#[derive(Clone)]
pub struct Stats {
    inner: Arc<StatsInner>,
}

struct StatsInner {
    config: StatConfig,
    services: RwLock<BTreeMap<String, Arc<ServiceStats>>>,
}

/// One row of the stat table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatRow {
    /// Service name.
    pub name: String,
    /// Successful requests / all requests in the window; `None` if there were none.
    pub success_rate: Option<f64>,
    /// Requests per second over the window (or over the time since the service was first seen,
    /// if that is shorter).
    pub rps: f64,
    /// Requests in the window.
    pub requests: u64,
    /// Median latency in milliseconds; `None` without requests.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latency in milliseconds.
    pub latency_p95_ms: Option<f64>,
    /// 99th percentile latency in milliseconds.
    pub latency_p99_ms: Option<f64>,
}

/// The stat view as served by the admin API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatSnapshot {
    /// The window, in seconds.
    pub window_seconds: f64,
    /// One row per service, sorted by name.
    pub rows: Vec<StatRow>,
}

// === impl StatConfig ===

impl Default for StatConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            bucket: Duration::from_secs(5),
        }
    }
}

impl StatConfig {
    /// Checks the window and bucket width.
    pub fn validate(&self) -> Result<(), StatConfigError> {
        if self.window < Duration::from_secs(15) {
            return Err(StatConfigError::WindowTooShort(self.window));
        }
        let (w, b) = (self.window.as_nanos(), self.bucket.as_nanos());
        if b == 0 || w % b != 0 {
            return Err(StatConfigError::BucketMismatch {
                bucket: self.bucket,
                window: self.window,
            });
        }
        if w / b > 600 {
            return Err(StatConfigError::TooManyBuckets {
                window: self.window,
                bucket: self.bucket,
                count: w / b,
            });
        }
        Ok(())
    }
}

// === impl Stats ===

impl Stats {
    /// Empty stat windows with `config`.
    pub fn new(config: StatConfig) -> Result<Self, StatConfigError> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(StatsInner {
                config,
                services: RwLock::new(BTreeMap::new()),
            }),
        })
    }

    /// The window of service `name`, created if needed. Call once per target and keep it.
    pub fn service(&self, name: &str) -> Arc<ServiceStats> {
        if let Some(s) = self.inner.services.read().get(name) {
            return s.clone();
        }
        self.inner
            .services
            .write()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ServiceStats::new(&self.inner.config)))
            .clone()
    }

    /// The configuration in use.
    pub fn config(&self) -> &StatConfig {
        &self.inner.config
    }

    /// One row per service, sorted by name, as of now.
    pub fn rows(&self) -> Vec<StatRow> {
        let now = Instant::now();
        self.inner
            .services
            .read()
            .iter()
            .map(|(name, s)| s.row(name, now))
            .collect()
    }

    /// The rows with the window, for the admin API.
    pub fn snapshot(&self) -> StatSnapshot {
        StatSnapshot {
            window_seconds: self.inner.config.window.as_secs_f64(),
            rows: self.rows(),
        }
    }

    /// [`Stats::snapshot`] as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.snapshot()).unwrap_or(serde_json::Value::Null)
    }

    /// The rows as a text table with `linkerd viz stat`'s columns and formats
    /// (`100.00%`, `1.5rps`, `12ms`; `-` where there is no data).
    pub fn table(&self) -> String {
        format_table(&self.rows())
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("config", &self.inner.config)
            .field("services", &self.inner.services.read().len())
            .finish()
    }
}

/// Formats rows as the stat table.
pub fn format_table(rows: &[StatRow]) -> String {
    const HEADERS: [&str; 6] = [
        "NAME",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.success_rate
                    .map(|s| format!("{:.2}%", s * 100.0))
                    .unwrap_or_else(|| "-".into()),
                format!("{:.1}rps", r.rps),
                fmt_ms(r.latency_p50_ms),
                fmt_ms(r.latency_p95_ms),
                fmt_ms(r.latency_p99_ms),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cols: [&str; 6]| {
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                let _ = write!(out, "{c:>w$}");
            } else if i == 0 {
                let _ = write!(out, "{c:<w$}   ");
            } else {
                let _ = write!(out, "{c:>w$}   ");
            }
        }
        out.push('\n');
    };
    line(HEADERS);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
    out
}

fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms >= 10.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{ms:.1}ms"),
    }
}

#[cfg(test)]
mod tests;
