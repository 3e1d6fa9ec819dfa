//! Server-reported load: what a server attaches to each response, and how a client reads it.
//!
//! A client's own view of an endpoint is late and biased: its latency estimate moves only after
//! slow responses come back, it includes the time requests queued at the server (a server that
//! serves 8 requests at once with a true 12 ms service time reads as 70–110 ms under load), and
//! with many clients one client's pending count is not the server's queue. Only the server knows
//! its requests in flight, how many it serves at once, and how long the application itself takes.
//! So a meshwork server reports them on every response, and the balancer ([`crate::p2c`]) ranks
//! endpoints by the time a new request would take there: wait for a slot, then the service time.
//!
//! **Format.** The report travels in ORCA's `endpoint-load-metrics` response header (the Open
//! Request Cost Aggregation format of gRPC and Envoy), TEXT encoding: `TEXT ` followed by
//! comma-separated `key=value` pairs. The standard field `application_utilization` carries in-flight
//! ÷ capacity, so an ORCA consumer (Envoy, gRPC's weighted round robin) can use it; what ORCA has no
//! field for is in named metrics:
//!
//! | key | meaning |
//! |---|---|
//! | `named_metrics.requests_in_flight` | requests at the server (served or queued), this one excluded |
//! | `named_metrics.concurrency` | how many requests it serves at once (its capacity) |
//! | `named_metrics.service_time_ms` | recent mean time in the application, queueing excluded |
//!
//! ```text
//! endpoint-load-metrics: TEXT application_utilization=0.25, named_metrics.requests_in_flight=2, named_metrics.concurrency=8, named_metrics.service_time_ms=12.5
//! ```
//!
//! A server that already reports ORCA is read too: other standard fields and unknown keys are
//! accepted and ignored; a report without the in-flight count and the service time is well formed
//! but not usable for the completion-time model, and leaves the endpoint on peak-EWMA.
//!
//! **Bounded parsing.** [`LoadReport::parse`] reads at most [`MAX_REPORT_BYTES`] and
//! [`MAX_ENTRIES`] pairs, never allocates, and rejects anything else with a [`ReportError`] that
//! says where (the balancer ignores a malformed report and counts it, see
//! [`crate::EndpointStats::malformed_reports`]). JSON and binary ORCA encodings are reported as
//! unsupported.
//!
//! **One hop.** A report describes the server of one hop: the client that reads it removes the
//! header ([`take_from_headers`]), so it never travels further up the call graph.
//!
//! **Server side.** [`LoadTracker`] counts requests in flight and keeps the service-time estimate
//! (an exponentially weighted mean over about the last 50 requests, weight
//! [`SERVICE_TIME_WEIGHT`] = 0.02: in `benches/lb_quality.rs` a weight of 0.1 left the mean of
//! σ = 0.6 lognormal service times 15 % noisy, enough to send requests to queue behind an
//! endpoint that only looked faster; 0.02 and 0.01 both matched the oracle there); the
//! meshwork server wraps the application in a layer that uses it.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mesh_balance::report::{LoadReport, LoadTracker};
//!
//! let tracker = Arc::new(LoadTracker::new(8));
//! let a = LoadTracker::start(&tracker);
//! let b = LoadTracker::start(&tracker);
//! let report = a.finish(Duration::from_millis(12)); // b is still in flight
//! assert_eq!(report.in_flight, Some(1));
//! assert_eq!(report.capacity, Some(8));
//! assert_eq!(report.service_time, Some(Duration::from_millis(12)));
//!
//! let header = report.to_header_value();
//! let parsed = LoadReport::parse(header.as_bytes()).expect("well formed");
//! assert_eq!(parsed.in_flight, Some(1));
//! assert!(parsed.usable());
//! # drop(b);
//! ```

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The response header that carries a load report (ORCA's name).
pub const HEADER: http::HeaderName = http::HeaderName::from_static("endpoint-load-metrics");

/// The longest header value read; a longer one is malformed.
pub const MAX_REPORT_BYTES: usize = 1024;

/// The most `key=value` pairs read; more make the report malformed.
pub const MAX_ENTRIES: usize = 32;

/// The weight of each new sample in the server's service-time estimate.
pub const SERVICE_TIME_WEIGHT: f64 = 0.02;

const IN_FLIGHT_KEY: &str = "named_metrics.requests_in_flight";
const CAPACITY_KEY: &str = "named_metrics.concurrency";
const SERVICE_TIME_KEY: &str = "named_metrics.service_time_ms";

/// The longest service time a report may carry (one hour); longer is malformed.
const MAX_SERVICE_MS: f64 = 3_600_000.0;

/// One load report, as a server sends it and a client reads it. Every field is optional: a
/// report from another ORCA server may carry none of meshwork's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Requests at the server (being served or queued), the reported one excluded.
    pub in_flight: Option<u32>,
    /// How many requests the server serves at once.
    pub capacity: Option<u32>,
    /// Recent mean time requests spent in the application (queueing excluded).
    pub service_time: Option<Duration>,
    /// ORCA's `application_utilization` (or, without it, `cpu_utilization`).
    pub utilization: Option<f64>,
}

/// Why a load report was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The value is longer than [`MAX_REPORT_BYTES`].
    #[error("load report of {len} bytes exceeds the {MAX_REPORT_BYTES}-byte limit")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The value is not in ORCA's TEXT encoding.
    #[error("unsupported load report encoding (only TEXT is read)")]
    Unsupported,
    /// The value has more than [`MAX_ENTRIES`] pairs.
    #[error("load report has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// Something at `offset` is not what the TEXT encoding allows.
    #[error("malformed load report at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset into the header value.
        offset: usize,
        /// What was expected.
        reason: &'static str,
    },
}

// === impl LoadReport ===

impl LoadReport {
    /// Whether the report has what the completion-time model needs: the in-flight count and the
    /// service time (capacity defaults to 1 when absent).
    pub fn usable(&self) -> bool {
        self.in_flight.is_some() && self.service_time.is_some_and(|s| !s.is_zero())
    }

    /// Parses an `endpoint-load-metrics` value in ORCA's TEXT encoding (see the
    /// [module docs](self)). Total: any input gives a report or an error, without allocating.
    pub fn parse(value: &[u8]) -> Result<Self, ReportError> {
        if value.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLong { len: value.len() });
        }
        let Some(rest) = value.strip_prefix(b"TEXT") else {
            return Err(ReportError::Unsupported);
        };
        let mut report = LoadReport::default();
        let mut cpu = None;
        let mut offset = 4;
        let mut entries = 0;
        for part in rest.split(|b| *b == b',') {
            let start = offset;
            offset += part.len() + 1;
            let trimmed = part.trim_ascii();
            if trimmed.is_empty() {
                if entries == 0 && rest.iter().all(u8::is_ascii_whitespace) {
                    break; // "TEXT" with no pairs: an empty report
                }
                return Err(malformed(start, "empty entry"));
            }
            if entries == 0 && !part.first().is_some_and(u8::is_ascii_whitespace) {
                return Err(malformed(start, "expected a space after TEXT"));
            }
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(ReportError::TooManyEntries);
            }
            let lead = part.len() - part.trim_ascii_start().len();
            let Some(eq) = trimmed.iter().position(|b| *b == b'=') else {
                return Err(malformed(start + lead, "expected key=value"));
            };
            let (key, value) = (&trimmed[..eq], &trimmed[eq + 1..]);
            if key.is_empty()
                || !key
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(malformed(start + lead, "invalid metric name"));
            }
            let number = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or(malformed(
                    start + lead + eq + 1,
                    "expected a finite number >= 0",
                ))?;
            let at = start + lead + eq + 1;
            match key {
                k if k == IN_FLIGHT_KEY.as_bytes() => report.in_flight = Some(count(number, at)?),
                k if k == CAPACITY_KEY.as_bytes() => {
                    let c = count(number, at)?;
                    if c == 0 {
                        return Err(malformed(at, "concurrency must be at least 1"));
                    }
                    report.capacity = Some(c);
                }
                k if k == SERVICE_TIME_KEY.as_bytes() => {
                    if number > MAX_SERVICE_MS {
                        return Err(malformed(at, "service time above one hour"));
                    }
                    report.service_time = Some(Duration::from_secs_f64(number / 1e3));
                }
                b"application_utilization" => report.utilization = Some(number),
                b"cpu_utilization" => cpu = Some(number),
                _ => {} // other ORCA fields and named metrics: not used
            }
        }
        report.utilization = report.utilization.or(cpu);
        Ok(report)
    }

    /// The report in ORCA's TEXT encoding, as a header value. Formats into a stack buffer; the
    /// header value is the one allocation.
    pub fn to_header_value(&self) -> http::HeaderValue {
        let mut buf = [0u8; 256];
        let len = {
            let mut w = &mut buf[..];
            let total = w.len();
            let _ = w.write_all(b"TEXT");
            let mut sep = " ";
            if let Some(u) = self.utilization.or_else(|| {
                let (q, c) = (self.in_flight?, self.capacity?);
                Some(f64::from(q) / f64::from(c.max(1)))
            }) {
                let _ = write!(w, "{sep}application_utilization={u:.3}");
                sep = ", ";
            }
            if let Some(q) = self.in_flight {
                let _ = write!(w, "{sep}{IN_FLIGHT_KEY}={q}");
                sep = ", ";
            }
            if let Some(c) = self.capacity {
                let _ = write!(w, "{sep}{CAPACITY_KEY}={c}");
                sep = ", ";
            }
            if let Some(s) = self.service_time {
                let _ = write!(w, "{sep}{SERVICE_TIME_KEY}={:.3}", s.as_secs_f64() * 1e3);
            }
            total - w.len()
        };
        // Only ASCII digits, letters and punctuation were written.
        http::HeaderValue::from_bytes(&buf[..len])
            .unwrap_or_else(|_| http::HeaderValue::from_static("TEXT"))
    }
}

fn malformed(offset: usize, reason: &'static str) -> ReportError {
    ReportError::Malformed { offset, reason }
}

fn count(v: f64, at: usize) -> Result<u32, ReportError> {
    if v.fract() != 0.0 || v > f64::from(u32::MAX) {
        return Err(malformed(at, "expected a whole number below 2^32"));
    }
    Ok(v as u32)
}

/// Removes every `endpoint-load-metrics` header from `headers` and parses the first: `None` when
/// there was none. The hop that consumes a report calls this, so reports never travel further.
pub fn take_from_headers(headers: &mut http::HeaderMap) -> Option<Result<LoadReport, ReportError>> {
    let value = headers.remove(HEADER)?;
    Some(LoadReport::parse(value.as_bytes()))
}

/// A server's load: requests in flight, its capacity and the service-time estimate. Shared by
/// every request to the server; all updates are single atomic operations.
#[derive(Debug)]
pub struct LoadTracker {
    in_flight: AtomicU32,
    capacity: u32,
    weight: f64,
    /// Mean service time in nanoseconds as f64 bits; 0 before the first sample.
    service_bits: AtomicU64,
}

/// One request in a [`LoadTracker`]: counted in flight until [`finish`](Started::finish)ed or
/// dropped.
#[derive(Debug)]
#[must_use = "a request is counted in flight until this is finished or dropped"]
pub struct Started {
    tracker: Arc<LoadTracker>,
    done: bool,
}

// === impl LoadTracker ===

impl LoadTracker {
    /// A tracker for a server that serves `capacity` requests at once (at least 1).
    pub fn new(capacity: u32) -> Self {
        Self::with_service_weight(capacity, SERVICE_TIME_WEIGHT)
    }

    /// A tracker whose service-time mean gives each new sample `weight` (clamped to `(0, 1]`)
    /// instead of [`SERVICE_TIME_WEIGHT`].
    pub fn with_service_weight(capacity: u32, weight: f64) -> Self {
        let weight = if weight.is_finite() && weight > 0.0 {
            weight.min(1.0)
        } else {
            SERVICE_TIME_WEIGHT
        };
        Self {
            in_flight: AtomicU32::new(0),
            capacity: capacity.max(1),
            weight,
            service_bits: AtomicU64::new(0),
        }
    }

    /// The capacity it reports.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current service-time estimate, `None` before the first sample.
    pub fn service_time(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.service_bits.load(Ordering::Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos(ns as u64))
    }

    /// A request arrived: it is in flight until the returned guard finishes or drops.
    pub fn start(this: &Arc<Self>) -> Started {
        this.in_flight.fetch_add(1, Ordering::Relaxed);
        Started {
            tracker: this.clone(),
            done: false,
        }
    }

    /// The report as it stands now (requests in flight included).
    pub fn report(&self) -> LoadReport {
        self.report_with(self.in_flight())
    }

    fn report_with(&self, in_flight: u32) -> LoadReport {
        LoadReport {
            in_flight: Some(in_flight),
            capacity: Some(self.capacity),
            service_time: self.service_time(),
            utilization: None,
        }
    }

    fn record(&self, service: Duration) {
        let sample = (service.as_nanos() as f64).max(1.0);
        let _ = self
            .service_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let prev = f64::from_bits(bits);
                let next = if prev > 0.0 {
                    prev + self.weight * (sample - prev)
                } else {
                    sample
                };
                Some(next.to_bits())
            });
    }
}

// === impl Started ===

impl Started {
    /// The request spent `service` in the application and is answered now: records the sample,
    /// ends the request and returns the report to send with its response.
    pub fn finish(mut self, service: Duration) -> LoadReport {
        self.done = true;
        let tracker = &self.tracker;
        tracker.record(service);
        let left = tracker
            .in_flight
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        tracker.report_with(left)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if !self.done {
            self.tracker.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meshwork_and_standard_orca_fields() {
        let r = LoadReport::parse(
            b"TEXT cpu_utilization=0.5, named_metrics.requests_in_flight=3, \
              named_metrics.concurrency=8,named_metrics.service_time_ms=12.5, rps_fractional=10, \
              named_metrics.other=1",
        )
        .expect("well formed");
        assert_eq!(r.in_flight, Some(3));
        assert_eq!(r.capacity, Some(8));
        assert_eq!(r.service_time, Some(Duration::from_micros(12_500)));
        assert_eq!(r.utilization, Some(0.5));
        assert!(r.usable());
    }

    #[test]
    fn a_plain_orca_report_is_well_formed_but_not_usable() {
        let r = LoadReport::parse(b"TEXT application_utilization=0.7, cpu_utilization=0.2")
            .expect("well formed");
        assert_eq!(r.utilization, Some(0.7));
        assert!(!r.usable());
        assert_eq!(LoadReport::parse(b"TEXT"), Ok(LoadReport::default()));
    }

    #[test]
    fn malformed_reports_say_where() {
        let cases: [(&[u8], ReportError); 8] = [
            (b"JSON {\"cpu_utilization\": 1}", ReportError::Unsupported),
            (
                b"TEXTcpu_utilization=1",
                malformed(4, "expected a space after TEXT"),
            ),
            (b"TEXT cpu_utilization", malformed(5, "expected key=value")),
            (
                b"TEXT cpu_utilization=-1",
                malformed(21, "expected a finite number >= 0"),
            ),
            (b"TEXT a=1,, b=2", malformed(9, "empty entry")),
            (
                b"TEXT named_metrics.requests_in_flight=1.5",
                malformed(38, "expected a whole number below 2^32"),
            ),
            (
                b"TEXT named_metrics.concurrency=0",
                malformed(31, "concurrency must be at least 1"),
            ),
            (b"TEXT a b=1", malformed(5, "invalid metric name")),
        ];
        for (input, want) in cases {
            assert_eq!(
                LoadReport::parse(input),
                Err(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b'x'; MAX_REPORT_BYTES + 1];
        assert_eq!(
            LoadReport::parse(&long),
            Err(ReportError::TooLong {
                len: MAX_REPORT_BYTES + 1
            })
        );
        let mut many = b"TEXT a=1".to_vec();
        for _ in 0..MAX_ENTRIES {
            many.extend_from_slice(b", a=1");
        }
        assert_eq!(LoadReport::parse(&many), Err(ReportError::TooManyEntries));
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_bytes() {
        // A small deterministic fuzz: every prefix and every one-byte corruption of a valid report.
        let valid = LoadReport {
            in_flight: Some(4),
            capacity: Some(8),
            service_time: Some(Duration::from_millis(9)),
            utilization: None,
        }
        .to_header_value();
        let bytes = valid.as_bytes();
        for end in 0..=bytes.len() {
            let _ = LoadReport::parse(&bytes[..end]);
        }
        for i in 0..bytes.len() {
            for b in [0u8, b',', b'=', b' ', b'-', b'.', b'e', 0xff] {
                let mut v = bytes.to_vec();
                v[i] = b;
                let _ = LoadReport::parse(&v);
            }
        }
    }

    #[test]
    fn a_report_round_trips_through_its_header() {
        let report = LoadReport {
            in_flight: Some(7),
            capacity: Some(2),
            service_time: Some(Duration::from_micros(30_250)),
            utilization: None,
        };
        let value = report.to_header_value();
        let back = LoadReport::parse(value.as_bytes()).expect("well formed");
        assert_eq!(back.in_flight, Some(7));
        assert_eq!(back.capacity, Some(2));
        assert_eq!(back.service_time, Some(Duration::from_micros(30_250)));
        assert_eq!(back.utilization, Some(3.5));
    }

    #[test]
    fn the_consuming_hop_removes_every_report_header() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            HEADER,
            http::HeaderValue::from_static("TEXT named_metrics.requests_in_flight=1"),
        );
        headers.append(HEADER, http::HeaderValue::from_static("TEXT x=1"));
        let got = take_from_headers(&mut headers)
            .expect("present")
            .expect("well formed");
        assert_eq!(got.in_flight, Some(1));
        assert!(headers.get(HEADER).is_none());
        assert!(take_from_headers(&mut headers).is_none());
    }

    #[test]
    fn the_tracker_reports_in_flight_capacity_and_mean_service_time() {
        let t = Arc::new(LoadTracker::new(4));
        assert_eq!(t.service_time(), None);
        let a = LoadTracker::start(&t);
        let b = LoadTracker::start(&t);
        let r = a.finish(Duration::from_millis(10));
        assert_eq!((r.in_flight, r.capacity), (Some(1), Some(4)));
        assert_eq!(r.service_time, Some(Duration::from_millis(10)));
        drop(b); // dropped (a cancelled request): no sample
        assert_eq!(t.in_flight(), 0);
        for _ in 0..1000 {
            let _ = LoadTracker::start(&t).finish(Duration::from_millis(20));
        }
        let ms = t.service_time().expect("sampled").as_secs_f64() * 1e3;
        assert!((ms - 20.0).abs() < 0.01, "{ms}");
    }
}
