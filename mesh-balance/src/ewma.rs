//! Peak-EWMA latency estimates, and how failures count into them.
//!
//! Each endpoint keeps one number: an estimate of its round-trip time. The balancer's cost for an
//! endpoint is `estimate × (pending + 1) / weight` (Finagle's `PeakEwma` balancer, Linkerd 2's and
//! tower's `PeakEwma` load): latency says how fast the endpoint answers, pending requests say how much
//! of that it is already doing, and the product ranks endpoints by the time a new request would take.
//!
//! **Peak rule.** A sample above the estimate replaces it at once; a sample below moves the estimate
//! toward it with weight `1 - exp(-Δt/decay)`, where `Δt` is the time since the previous update. An
//! endpoint that becomes slow is avoided after one slow response; one that becomes fast is trusted
//! again over about `decay` (default 10 s, Linkerd 2's value). The decay is per unit *time*, not per
//! sample, so it does not depend on the request rate.
//!
//! **Idle decay.** When the cost is *read*, the estimate is faded toward zero by `exp(-idle/decay)`,
//! `idle` being the time since the last update (Finagle and tower do the same by updating with a zero
//! sample on each read). Without it an endpoint that once answered slowly would keep its peak forever,
//! since it gets no requests that could lower it; with it, an avoided endpoint is tried again after a
//! while (`decay × ln(estimate / others' cost)`), and one response restores its peak if it is still slow.
//! Reads do not write, so they are one atomic load each.
//!
//! **Failures.** A least-loaded balancer loves an endpoint that fails in 1 ms: it looks like the fastest
//! endpoint of the set and drains traffic into a black hole. So a response the classifier calls a
//! failure is recorded as taking `max(observed, min(max_failure_rtt, failure_penalty × max(estimate,
//! default_rtt)))`. With the defaults (penalty 5×, cap 10 s) a 10 ms endpoint that starts failing in
//! 1 ms is costed 150 ms, 750 ms, 3.75 s, 10 s after one, two, three, four failures: the estimate grows
//! geometrically, so a steadily failing endpoint quickly gets almost nothing (a retry-less success rate
//! above 99 % in the `fast-fail` simulation of `benches/lb_quality.rs`), while one failure among
//! successes costs a few seconds of reduced share that the successes decay away. The cap bounds how long
//! a recovered endpoint waits to be tried again: `decay × ln(cap / others' cost)`, about 45 s.
//! Ejection proper is the circuit breaker's business ([`crate::Health`]); this only keeps the cost honest.
//!
//! **Dropped requests.** A request dropped before the endpoint answered took at least its elapsed
//! time: that is recorded when it exceeds the estimate (as tower's `PeakEwma` charges on drop). A
//! drop that comes before the estimate says nothing new, since the estimate already predicts
//! longer. And from the second request in a row dropped unanswered, with no answer in between,
//! each drop is charged as a failure: an endpoint that answers nothing is stalled, and under a
//! timeout shorter than the others' cost it would otherwise keep a share of the traffic (the
//! `stall` simulation of `benches/lb_quality.rs`).
//!
//! ```
//! use std::time::Duration;
//! use mesh_balance::RttEstimate;
//! use tokio::time::Instant;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let decay = Duration::from_secs(10);
//! let t0 = Instant::now();
//! let mut rtt = RttEstimate::new(Duration::from_millis(30), t0);
//! rtt.observe(Duration::from_millis(100), t0, decay); // above: replaces
//! assert_eq!(rtt.estimate(), Duration::from_millis(100));
//! // 10 s later a 10 ms sample moves it by 1 - 1/e.
//! rtt.observe(Duration::from_millis(10), t0 + decay, decay);
//! let ms = rtt.estimate().as_secs_f64() * 1e3;
//! assert!((ms - (100.0 / std::f64::consts::E + 10.0 * (1.0 - 1.0 / std::f64::consts::E))).abs() < 0.01);
//! # }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One endpoint's peak-EWMA round-trip estimate: the plain math, without atomics.
///
/// The balancer keeps the same state in atomics per endpoint; this type is the reference for the
/// arithmetic and is usable on its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RttEstimate {
    estimate_ns: f64,
    updated: Instant,
}

// === impl RttEstimate ===

impl RttEstimate {
    /// An estimate of `initial`, last updated at `now`.
    pub fn new(initial: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: nanos(initial),
            updated: now,
        }
    }

    /// The current estimate, as last updated (no idle decay).
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(self.estimate_ns as u64)
    }

    /// The estimate as the balancer reads it at `now`: faded toward zero by `exp(-idle/decay)`.
    pub fn decayed(&self, now: Instant, decay: Duration) -> Duration {
        let idle = nanos(now.saturating_duration_since(self.updated));
        Duration::from_nanos(idle_decay(self.estimate_ns, idle, nanos(decay)) as u64)
    }

    /// Records a response that took `rtt`, observed at `now` (peak rule).
    pub fn observe(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        let elapsed = nanos(now.saturating_duration_since(self.updated));
        self.estimate_ns = peak_ewma(self.estimate_ns, nanos(rtt), elapsed, nanos(decay));
        self.updated = self.updated.max(now);
    }

    /// Records a *failed* response that took `rtt`: it counts as
    /// `max(rtt, min(max_rtt, penalty × max(estimate, floor)))` (see the [module docs](self)).
    pub fn observe_failure(
        &mut self,
        rtt: Duration,
        now: Instant,
        decay: Duration,
        penalty: &Penalty,
    ) {
        let sample = penalty.sample(self.estimate_ns, nanos(rtt));
        let elapsed = nanos(now.saturating_duration_since(self.updated));
        self.estimate_ns = peak_ewma(self.estimate_ns, sample, elapsed, nanos(decay));
        self.updated = self.updated.max(now);
    }
}

/// How a failure is charged: `max(observed, min(max, factor × max(estimate, floor)))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalty {
    /// Multiplier of the current estimate (`Config::failure_penalty`).
    pub factor: f64,
    /// The estimate is taken as at least this (`Config::default_rtt`), so an endpoint with a tiny
    /// estimate is still charged meaningfully.
    pub floor: Duration,
    /// The most one failure is charged (`Config::max_failure_rtt`).
    pub max: Duration,
}

impl Penalty {
    fn sample(&self, estimate_ns: f64, observed_ns: f64) -> f64 {
        let charged = (self.factor * estimate_ns.max(nanos(self.floor))).min(nanos(self.max));
        observed_ns.max(charged)
    }
}

/// Peak-EWMA update of `prev` with `sample`, `elapsed_ns` after the previous update.
#[inline]
fn peak_ewma(prev: f64, sample: f64, elapsed_ns: f64, decay_ns: f64) -> f64 {
    if sample > prev {
        sample
    } else {
        let w = fade(elapsed_ns / decay_ns);
        prev * w + sample * (1.0 - w)
    }
}

/// The estimate faded toward zero over `idle_ns`.
#[inline]
fn idle_decay(prev: f64, idle_ns: f64, decay_ns: f64) -> f64 {
    if idle_ns <= 0.0 {
        prev
    } else {
        prev * fade(idle_ns / decay_ns)
    }
}

/// `exp(-x)`. Most updates under load come a few milliseconds or less after the previous one,
/// with the 10 s default decay: for `0 ≤ x < 1e-3` a degree-4 Taylor polynomial gives the same
/// value to within 1e-17 (below a double's resolution near 1) for a few multiplications, where
/// libm's `exp` took about 20 ns, twice per pick and once per response.
#[inline]
fn fade(x: f64) -> f64 {
    if (0.0..1e-3).contains(&x) {
        1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x / 24.0)))
    } else {
        exp_minus(x)
    }
}

/// libm's `exp(-x)`, out of line: inlined, the compiler computed it on both branches of [`fade`]
/// and chose after.
#[inline(never)]
fn exp_minus(x: f64) -> f64 {
    (-x).exp()
}

#[inline]
pub(crate) fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Over this time the part of a report's in-flight count that other clients sent fades from the
/// cost: a report says how busy the server was then, and the older it is the less it says about now.
const REPORT_HORIZON_NS: f64 = 1e9;

/// One endpoint's load state, shared by every request to it: the estimate (f64 bits), when it was last
/// updated (nanoseconds after the balancer's base instant), and the number of requests in flight.
/// Once the endpoint reports its load ([`crate::report`]), also the latest report and a failure
/// penalty for the completion-time cost.
///
/// Reads are plain atomic loads. Updates are a compare-and-swap loop on the estimate; a concurrent
/// update may use a slightly stale `updated`, which only shifts one sample's weight by a few
/// nanoseconds' worth of decay. A report's fields are stored one by one: a read racing a newer
/// report may mix the two, which moves one comparison by one report's difference.
#[derive(Debug)]
pub(crate) struct EndpointLoad {
    estimate_bits: AtomicU64,
    updated_ns: AtomicU64,
    pending: AtomicUsize,
    /// Requests dropped unanswered since the endpoint last answered anything.
    unanswered: AtomicU32,
    /// The endpoint's last attempt was refused at connect, and none has succeeded since.
    refused: AtomicBool,
    /// When the latest usable report arrived, as `now_ns + 1`; 0: never (peak-EWMA cost).
    report_at: AtomicU64,
    /// The report's requests in flight at the server.
    report_in_flight: AtomicU32,
    /// Our own requests in flight to it when the report arrived (the reported one excluded).
    report_ours: AtomicU32,
    /// The report's capacity (at least 1).
    report_capacity: AtomicU32,
    /// The report's service time, ns as f64 bits.
    service_bits: AtomicU64,
    /// Failure penalty of a reporting endpoint (ns as f64 bits) and when it was last raised.
    penalty_bits: AtomicU64,
    penalty_at: AtomicU64,
    /// Reports read, and malformed reports ignored.
    reports: AtomicU64,
    malformed: AtomicU64,
}

/// A reporting endpoint's latest report, as [`EndpointLoad::reported_load`] reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reported {
    pub(crate) age_ns: u64,
    pub(crate) in_flight: u32,
    pub(crate) capacity: u32,
    pub(crate) service_ns: f64,
}

// === impl EndpointLoad ===

impl EndpointLoad {
    pub(crate) fn new(default_rtt_ns: f64, now_ns: u64) -> Self {
        Self {
            estimate_bits: AtomicU64::new(default_rtt_ns.to_bits()),
            updated_ns: AtomicU64::new(now_ns),
            pending: AtomicUsize::new(0),
            unanswered: AtomicU32::new(0),
            refused: AtomicBool::new(false),
            report_at: AtomicU64::new(0),
            report_in_flight: AtomicU32::new(0),
            report_ours: AtomicU32::new(0),
            report_capacity: AtomicU32::new(1),
            service_bits: AtomicU64::new(0),
            penalty_bits: AtomicU64::new(0),
            penalty_at: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    /// Whether the endpoint has ever sent a usable load report.
    #[inline]
    pub(crate) fn reported(&self) -> bool {
        self.report_at.load(Ordering::Relaxed) != 0
    }

    /// Records a load report read at `now_ns`, when `ours` other requests of ours were in flight
    /// to the endpoint. A report without the in-flight count and service time counts as read but
    /// changes nothing.
    pub(crate) fn record_report(
        &self,
        report: &crate::report::LoadReport,
        now_ns: u64,
        ours: usize,
    ) {
        self.reports.fetch_add(1, Ordering::Relaxed);
        let (Some(in_flight), Some(service)) = (report.in_flight, report.service_time) else {
            return;
        };
        if service.is_zero() {
            return;
        }
        self.report_in_flight.store(in_flight, Ordering::Relaxed);
        self.report_ours
            .store(u32::try_from(ours).unwrap_or(u32::MAX), Ordering::Relaxed);
        self.report_capacity
            .store(report.capacity.unwrap_or(1).max(1), Ordering::Relaxed);
        self.service_bits
            .store(nanos(service).to_bits(), Ordering::Relaxed);
        self.report_at
            .store(now_ns.saturating_add(1), Ordering::Relaxed);
    }

    /// Counts a malformed report (ignored).
    pub(crate) fn record_malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    /// Reports read and malformed reports ignored.
    pub(crate) fn report_counts(&self) -> (u64, u64) {
        (
            self.reports.load(Ordering::Relaxed),
            self.malformed.load(Ordering::Relaxed),
        )
    }

    /// The latest usable report, if any.
    pub(crate) fn reported_load(&self, now_ns: u64) -> Option<Reported> {
        let at = self.report_at.load(Ordering::Relaxed);
        (at != 0).then(|| Reported {
            age_ns: now_ns.saturating_sub(at - 1),
            in_flight: self.report_in_flight.load(Ordering::Relaxed),
            capacity: self.report_capacity.load(Ordering::Relaxed),
            service_ns: f64::from_bits(self.service_bits.load(Ordering::Relaxed)),
        })
    }

    /// Expected completion time of a new request at a reporting endpoint, in nanoseconds: wait for
    /// a slot, then the service time. The server's queue is estimated as our requests in flight now
    /// plus the others' share of the last report (faded over [`REPORT_HORIZON_NS`]); with `q`
    /// requests there and capacity `c`, a new one waits for `max(0, q + 1 - c)` of the `c`
    /// parallel departures, each `service / c` apart. A failure penalty (see
    /// [`EndpointLoad::observe`]) overrides it while it is higher.
    #[inline]
    pub(crate) fn completion_cost(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let at = self.report_at.load(Ordering::Relaxed);
        let service = f64::from_bits(self.service_bits.load(Ordering::Relaxed));
        let capacity = f64::from(self.report_capacity.load(Ordering::Relaxed));
        let others = self
            .report_in_flight
            .load(Ordering::Relaxed)
            .saturating_sub(self.report_ours.load(Ordering::Relaxed));
        let age = now_ns.saturating_sub(at.saturating_sub(1)) as f64;
        let queue = self.pending.load(Ordering::Relaxed) as f64
            + f64::from(others) * fade(age / REPORT_HORIZON_NS);
        let wait = (queue + 1.0 - capacity).max(0.0) / capacity;
        let expected = service * (1.0 + wait);
        expected.max(self.penalty_ns(now_ns, decay_ns))
    }

    #[inline]
    fn penalty_ns(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let p = f64::from_bits(self.penalty_bits.load(Ordering::Relaxed));
        if p == 0.0 {
            return 0.0;
        }
        let idle = now_ns.saturating_sub(self.penalty_at.load(Ordering::Relaxed)) as f64;
        idle_decay(p, idle, decay_ns)
    }

    /// Raises a reporting endpoint's failure penalty: the same geometric charge as the peak-EWMA
    /// estimate's, based on the larger of the current penalty and the service time.
    fn penalize(&self, rtt_ns: f64, penalty: &Penalty, now_ns: u64, decay_ns: f64) {
        let current = self.penalty_ns(now_ns, decay_ns);
        let service = f64::from_bits(self.service_bits.load(Ordering::Relaxed));
        let charged = penalty.sample(current.max(service), rtt_ns).max(current);
        self.penalty_bits
            .store(charged.to_bits(), Ordering::Relaxed);
        self.penalty_at.store(now_ns, Ordering::Relaxed);
    }

    /// Forgets what was learned: the estimate starts again from `default_rtt_ns` at `now_ns` (an
    /// endpoint restored after ejection is judged afresh, not by the failures that ejected it).
    pub(crate) fn reset(&self, default_rtt_ns: f64, now_ns: u64) {
        self.estimate_bits
            .store(default_rtt_ns.to_bits(), Ordering::Relaxed);
        self.updated_ns.store(now_ns, Ordering::Relaxed);
        self.unanswered.store(0, Ordering::Relaxed);
        self.penalty_bits.store(0f64.to_bits(), Ordering::Relaxed);
    }

    /// Whether the endpoint's last attempt was refused at connect (and none succeeded since).
    #[inline]
    pub(crate) fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn set_refused(&self, refused: bool) {
        if self.refused.load(Ordering::Relaxed) != refused {
            self.refused.store(refused, Ordering::Relaxed);
        }
    }

    /// The endpoint answered (anything): it is not stalled.
    #[inline]
    pub(crate) fn answered(&self) {
        if self.unanswered.load(Ordering::Relaxed) != 0 {
            self.unanswered.store(0, Ordering::Relaxed);
        }
    }

    /// A request to it was dropped before any answer; returns how many in a row now.
    pub(crate) fn unanswered(&self) -> u32 {
        self.unanswered.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The endpoint's cost in nanoseconds: [`EndpointLoad::completion_cost`] once it has
    /// reported its load, else `decayed estimate × (pending + 1)` (peak-EWMA).
    #[inline]
    pub(crate) fn cost(&self, now_ns: u64, decay_ns: f64) -> f64 {
        if self.reported() {
            return self.completion_cost(now_ns, decay_ns);
        }
        self.ewma_cost(now_ns, decay_ns)
    }

    /// `decayed estimate × (pending + 1)`, in nanoseconds.
    #[inline]
    pub(crate) fn ewma_cost(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let est = f64::from_bits(self.estimate_bits.load(Ordering::Relaxed));
        let updated = self.updated_ns.load(Ordering::Relaxed);
        let idle = now_ns.saturating_sub(updated) as f64;
        let pending = self.pending.load(Ordering::Relaxed);
        idle_decay(est, idle, decay_ns) * (pending as f64 + 1.0)
    }

    /// The estimate in nanoseconds, decayed for idleness at `now_ns`.
    pub(crate) fn estimate_ns(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let est = f64::from_bits(self.estimate_bits.load(Ordering::Relaxed));
        let idle = now_ns.saturating_sub(self.updated_ns.load(Ordering::Relaxed)) as f64;
        idle_decay(est, idle, decay_ns)
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn start(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn finish(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records a response of `rtt_ns` at `now_ns`; failures are charged through `penalty` (to the
    /// peak-EWMA estimate, and to the completion-time cost's penalty once the endpoint reports).
    pub(crate) fn observe(
        &self,
        rtt_ns: f64,
        failed: Option<&Penalty>,
        now_ns: u64,
        decay_ns: f64,
    ) {
        if let Some(penalty) = failed {
            if self.reported() {
                self.penalize(rtt_ns, penalty, now_ns, decay_ns);
            }
        }
        let updated = self.updated_ns.load(Ordering::Relaxed);
        let elapsed = now_ns.saturating_sub(updated) as f64;
        let _ = self
            .estimate_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let prev = f64::from_bits(bits);
                let sample = match failed {
                    Some(p) => p.sample(prev, rtt_ns),
                    None => rtt_ns,
                };
                Some(peak_ewma(prev, sample, elapsed, decay_ns).to_bits())
            });
        self.updated_ns.fetch_max(now_ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fade_is_exp_of_minus_x_to_a_double_s_resolution() {
        let mut worst: f64 = 0.0;
        for i in 0..=20_000 {
            // Both sides of the switch to libm, and the small ones densely.
            let x = f64::from(i) * 1e-7;
            worst = worst.max((fade(x) - (-x).exp()).abs());
        }
        for x in [
            0.0,
            1e-12,
            1e-9,
            5e-4,
            0.000_999_999,
            1e-3,
            0.5,
            1.0,
            30.0,
            800.0,
        ] {
            worst = worst.max((fade(x) - (-x).exp()).abs());
        }
        assert!(worst <= 2.0 * f64::EPSILON, "worst difference {worst:e}");
        assert_eq!(fade(0.0), 1.0);
        assert_eq!(fade(f64::INFINITY), 0.0);
        assert!(fade(f64::NAN).is_nan());
        // Not expected (elapsed times saturate at zero), but a negative x is still exp(-x).
        assert_eq!(fade(-1.0), 1f64.exp());
    }

    const DECAY: Duration = Duration::from_secs(10);

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_above_the_estimate_replaces_it() {
        let t0 = Instant::now();
        let mut rtt = RttEstimate::new(Duration::from_millis(30), t0);
        rtt.observe(
            Duration::from_millis(250),
            t0 + Duration::from_millis(1),
            DECAY,
        );
        assert_eq!(rtt.estimate(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_below_decays_toward_it_by_elapsed_time() {
        let t0 = Instant::now();
        let mut rtt = RttEstimate::new(Duration::from_millis(100), t0);
        // Half a time constant later: weight exp(-0.5) on the old value.
        rtt.observe(Duration::from_millis(20), t0 + DECAY / 2, DECAY);
        let w = (-0.5f64).exp();
        let want = 100.0 * w + 20.0 * (1.0 - w);
        assert!(
            (ms(rtt.estimate()) - want).abs() < 1e-3,
            "{:?}",
            rtt.estimate()
        );

        // A sample at the same instant does not move it (Δt = 0).
        let before = rtt.estimate();
        rtt.observe(Duration::from_millis(1), t0 + DECAY / 2, DECAY);
        assert_eq!(rtt.estimate(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn reading_an_idle_estimate_fades_it_toward_zero() {
        let t0 = Instant::now();
        let rtt = RttEstimate::new(Duration::from_millis(100), t0);
        assert_eq!(rtt.decayed(t0, DECAY), Duration::from_millis(100));
        let later = ms(rtt.decayed(t0 + DECAY, DECAY));
        assert!(
            (later - 100.0 / std::f64::consts::E).abs() < 1e-3,
            "{later}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_charged_geometrically_up_to_the_cap() {
        let t0 = Instant::now();
        let penalty = Penalty {
            factor: 5.0,
            floor: Duration::from_millis(30),
            max: Duration::from_secs(10),
        };
        let mut rtt = RttEstimate::new(Duration::from_millis(10), t0);
        let fast = Duration::from_millis(1);
        let mut seen = Vec::new();
        for i in 1..=5 {
            rtt.observe_failure(fast, t0 + Duration::from_millis(i), DECAY, &penalty);
            seen.push(ms(rtt.estimate()).round() as u64);
        }
        // floor 30 ms × 5, then 5× the previous estimate, capped at 10 s.
        assert_eq!(seen, vec![150, 750, 3750, 10_000, 10_000]);

        // A slow failure is charged at least its real time.
        let mut slow = RttEstimate::new(Duration::from_millis(10), t0);
        let p = Penalty {
            max: Duration::from_millis(100),
            ..penalty
        };
        slow.observe_failure(Duration::from_secs(2), t0, DECAY, &p);
        assert_eq!(slow.estimate(), Duration::from_secs(2));
    }

    #[test]
    fn a_reporting_endpoint_costs_its_wait_for_a_slot_plus_service_time() {
        let decay_ns = nanos(DECAY);
        let load = EndpointLoad::new(30e6, 0);
        assert!(!load.reported());
        let report = crate::LoadReport {
            in_flight: Some(10),
            capacity: Some(4),
            service_time: Some(Duration::from_millis(8)),
            utilization: None,
        };
        // 10 at the server, 2 of them ours: 8 from other clients.
        load.record_report(&report, 1_000, 2);
        assert!(load.reported());
        load.start();
        load.start();
        // q = 2 + 8 = 10 ≥ 4 slots: wait for 10 + 1 - 4 = 7 of 4 parallel departures.
        let cost = load.cost(1_000, decay_ns);
        assert!((cost - 8e6 * (1.0 + 7.0 / 4.0)).abs() < 1.0, "{cost}");
        // Ten seconds later the others' share has faded: q = 2 < 4, just the service time.
        let later = load.cost(1_000 + 10_000_000_000, decay_ns);
        assert!((later - 8e6).abs() < 1e3, "{later}");
        // A failure overrides it with the penalty, as for peak-EWMA.
        let penalty = Penalty {
            factor: 5.0,
            floor: Duration::from_millis(30),
            max: Duration::from_secs(10),
        };
        load.observe(1e6, Some(&penalty), 2_000, decay_ns);
        assert!((load.cost(2_000, decay_ns) - 150e6).abs() < 1.0);
        // A report without the model's fields is read but changes nothing.
        let other = EndpointLoad::new(30e6, 0);
        other.record_report(&crate::LoadReport::default(), 1, 0);
        assert!(!other.reported());
        assert_eq!(other.report_counts(), (1, 0));
    }

    #[test]
    fn atomic_load_state_matches_the_reference_math() {
        let decay_ns = nanos(DECAY);
        let load = EndpointLoad::new(30e6, 0);
        load.observe(100e6, None, 1_000, decay_ns);
        assert_eq!(load.estimate_ns(1_000, decay_ns), 100e6);
        load.observe(10e6, None, 1_000 + 5_000_000_000, decay_ns);
        let w = (-0.5f64).exp();
        let want = 100e6 * w + 10e6 * (1.0 - w);
        let got = load.estimate_ns(1_000 + 5_000_000_000, decay_ns);
        assert!((got - want).abs() < 1.0, "{got} vs {want}");

        load.start();
        load.start();
        let cost = load.cost(1_000 + 5_000_000_000, decay_ns);
        assert!((cost - 3.0 * want).abs() < 3.0);
        load.finish();
        assert_eq!(load.pending(), 1);
    }
}
