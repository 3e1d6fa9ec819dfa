//! Balancer behaviour on tokio's paused clock: every test is deterministic (fixed seed) and takes
//! simulated, not real, time.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower::discover::Change;
use tower::{Service, ServiceExt};

use crate::{Balance, BoxError, Config, Endpoint, Error, Health, HealthState};

/// A test endpoint: answers after `latency` with an HTTP-like status, counts its calls.
#[derive(Clone)]
struct Backend {
    latency: Duration,
    status: u16,
    calls: Arc<AtomicUsize>,
}

impl Backend {
    fn new(latency_ms: u64) -> Self {
        Self {
            latency: Duration::from_millis(latency_ms),
            status: 200,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn failing(latency_ms: u64) -> Self {
        Self {
            status: 503,
            ..Self::new(latency_ms)
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Service<u32> for Backend {
    type Response = u16;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u16, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (latency, status) = (self.latency, self.status);
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(status)
        })
    }
}

type Tx = mpsc::UnboundedSender<Result<Change<usize, Endpoint<Backend>>, Infallible>>;
type Http5xx = fn(&Result<u16, Infallible>) -> bool;
type Lb = Balance<usize, Backend, Http5xx>;

fn is_5xx(r: &Result<u16, Infallible>) -> bool {
    matches!(r, Ok(s) if *s >= 500)
}

fn config() -> Config {
    Config {
        seed: Some(7),
        ..Config::default()
    }
}

fn balancer(config: Config) -> (Lb, Tx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let lb = Balance::builder(config)
        .classify(is_5xx as Http5xx)
        .spawn(UnboundedReceiverStream::new(rx))
        .unwrap();
    (lb, tx)
}

fn insert(tx: &Tx, key: usize, ep: Endpoint<Backend>) {
    tx.send(Ok(Change::Insert(key, ep))).unwrap();
}

/// Waits (in simulated time) until the driver has published a set of `n` endpoints.
async fn settle(lb: &Lb, n: usize) {
    for _ in 0..1000 {
        if lb.len() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("endpoint set never reached {n} (is {})", lb.len());
}

/// Discovery's side of a balancer over endpoints of type `S`.
type OneTx<S> = mpsc::UnboundedSender<Result<Change<usize, Endpoint<S>>, Infallible>>;

/// A balancer over one endpoint, `service`, once the driver has published it (discovery stays
/// open while the sender lives).
async fn one_endpoint<S, C>(service: S, classify: C) -> (Balance<usize, S, C>, OneTx<S>)
where
    S: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let lb = Balance::builder(config())
        .classify(classify)
        .spawn(UnboundedReceiverStream::new(rx))
        .unwrap();
    tx.send(Ok(Change::Insert(0, Endpoint::new(service))))
        .unwrap();
    for _ in 0..1000 {
        if lb.len() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(lb.len(), 1);
    (lb, tx)
}

/// `workers` closed-loop clients, each sending `per_worker` requests back to back. Returns the
/// statuses seen (or 0 for a balancer error).
async fn load(lb: &Lb, workers: usize, per_worker: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut lb = lb.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let r = lb
                    .ready()
                    .await
                    .unwrap()
                    .call((w * per_worker + i) as u32)
                    .await;
                out.push(r.unwrap_or(0));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(start_paused = true)]
async fn weights_give_a_proportional_share_under_load() {
    let (lb, tx) = balancer(config());
    let (heavy, light) = (Backend::new(10), Backend::new(10));
    insert(&tx, 0, Endpoint::new(heavy.clone()).weight(2));
    insert(&tx, 1, Endpoint::new(light.clone()).weight(1));
    settle(&lb, 2).await;

    load(&lb, 30, 200).await;
    let ratio = heavy.calls() as f64 / light.calls() as f64;
    assert!(
        (1.6..=2.6).contains(&ratio),
        "heavy {} light {} ratio {ratio}",
        heavy.calls(),
        light.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn drained_endpoint_gets_nothing_unless_everything_is_drained() {
    let (lb, tx) = balancer(config());
    let (live, drained) = (Backend::new(5), Backend::new(5));
    insert(&tx, 0, Endpoint::new(live.clone()));
    insert(&tx, 1, Endpoint::new(drained.clone()).weight(0));
    settle(&lb, 2).await;
    load(&lb, 4, 50).await;
    assert_eq!(drained.calls(), 0);
    assert_eq!(live.calls(), 200);

    tx.send(Ok(Change::Remove(0))).unwrap();
    settle(&lb, 1).await;
    let statuses = load(&lb, 1, 5).await;
    assert_eq!(statuses, vec![200; 5]);
    assert_eq!(drained.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn slow_endpoint_gets_less_traffic() {
    let (lb, tx) = balancer(config());
    let fast: Vec<Backend> = (0..3).map(|_| Backend::new(10)).collect();
    let slow = Backend::new(100);
    for (i, b) in fast.iter().enumerate() {
        insert(&tx, i, Endpoint::new(b.clone()));
    }
    insert(&tx, 3, Endpoint::new(slow.clone()));
    settle(&lb, 4).await;

    load(&lb, 8, 300).await;
    let total: usize = fast.iter().map(Backend::calls).sum::<usize>() + slow.calls();
    let share = slow.calls() as f64 / total as f64;
    // Round robin would give it 25 %.
    assert!(share < 0.05, "slow endpoint got {share:.3} of {total}");
    let stats = lb.endpoints();
    let slow_stats = stats.iter().find(|s| s.key == 3).unwrap();
    assert!(
        slow_stats.rtt_estimate > Duration::from_millis(20),
        "{slow_stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fast_failing_endpoint_gets_little_traffic() {
    let (lb, tx) = balancer(config());
    let good: Vec<Backend> = (0..3).map(|_| Backend::new(10)).collect();
    let bad = Backend::failing(1);
    for (i, b) in good.iter().enumerate() {
        insert(&tx, i, Endpoint::new(b.clone()));
    }
    insert(&tx, 3, Endpoint::new(bad.clone()));
    settle(&lb, 4).await;

    let statuses = load(&lb, 8, 300).await;
    let failures = statuses.iter().filter(|s| **s == 503).count();
    // A least-loaded balancer without failure accounting would send it most of the traffic.
    assert_eq!(failures, bad.calls());
    assert!(
        failures < statuses.len() / 100,
        "{failures} of {} failed",
        statuses.len()
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_failure_classifier_the_fast_failing_endpoint_is_a_black_hole() {
    // The same fleet with a classifier that calls nothing a failure: the 1 ms endpoint looks fastest.
    let (tx, rx) = mpsc::unbounded_channel();
    let never = (|_: &Result<u16, Infallible>| false) as Http5xx;
    let lb: Lb = Balance::builder(config())
        .classify(never)
        .spawn(UnboundedReceiverStream::new(rx))
        .unwrap();
    let bad = Backend::failing(1);
    for i in 0..3 {
        insert(&tx, i, Endpoint::new(Backend::new(10)));
    }
    insert(&tx, 3, Endpoint::new(bad.clone()));
    settle(&lb, 4).await;
    let statuses = load(&lb, 8, 300).await;
    assert!(bad.calls() > statuses.len() / 4, "{} calls", bad.calls());
}

#[tokio::test(start_paused = true)]
async fn ejected_endpoint_gets_none() {
    let (lb, tx) = balancer(config());
    let backends: Vec<Backend> = (0..4).map(|_| Backend::new(10)).collect();
    let healths: Vec<Health> = (0..4).map(|_| Health::new()).collect();
    for (i, b) in backends.iter().enumerate() {
        insert(&tx, i, Endpoint::new(b.clone()).health(healths[i].clone()));
    }
    settle(&lb, 4).await;
    // Two of four ejected: half are available, which is not panic.
    healths[0].eject();
    healths[1].eject();
    load(&lb, 4, 100).await;
    assert_eq!(backends[0].calls() + backends[1].calls(), 0);
    assert_eq!(backends[2].calls() + backends[3].calls(), 400);
    let states: Vec<HealthState> = lb.endpoints().iter().map(|s| s.health).collect();
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == HealthState::Ejected)
            .count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn panic_mode_balances_over_all_when_fewer_than_half_are_available() {
    let (lb, tx) = balancer(config());
    let backends: Vec<Backend> = (0..4).map(|_| Backend::new(10)).collect();
    let healths: Vec<Health> = (0..4).map(|_| Health::new()).collect();
    for (i, b) in backends.iter().enumerate() {
        insert(&tx, i, Endpoint::new(b.clone()).health(healths[i].clone()));
    }
    settle(&lb, 4).await;
    for h in &healths[..3] {
        h.eject();
    }
    load(&lb, 8, 100).await;
    for (i, b) in backends.iter().enumerate() {
        assert!(b.calls() > 50, "endpoint {i} got {} of 800", b.calls());
    }
}

#[tokio::test(start_paused = true)]
async fn panic_mode_can_be_disabled() {
    let (lb, tx) = balancer(Config {
        panic_threshold: 0.0,
        ..config()
    });
    let h = Health::new();
    insert(&tx, 0, Endpoint::new(Backend::new(1)).health(h.clone()));
    settle(&lb, 1).await;
    h.eject();
    let mut lb2 = lb.clone();
    let err = lb2.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Error>(),
        Some(&Error::NoneAvailable { endpoints: 1 })
    );
}

#[tokio::test(start_paused = true)]
async fn a_probing_endpoint_gets_exactly_one_request() {
    let (lb, tx) = balancer(config());
    let backends: Vec<Backend> = (0..4).map(|_| Backend::new(10)).collect();
    let probed = Health::new();
    for (i, b) in backends.iter().enumerate() {
        let health = if i == 0 {
            probed.clone()
        } else {
            Health::new()
        };
        insert(&tx, i, Endpoint::new(b.clone()).health(health));
    }
    settle(&lb, 4).await;
    probed.eject();
    probed.probe();
    // Nothing (no breaker here) restores it, so after its probe it must get nothing more.
    load(&lb, 8, 100).await;
    assert_eq!(backends[0].calls(), 1);
    assert_eq!(probed.state(), HealthState::Probing);
    assert!(!probed.try_acquire_probe(), "the probe was handed out");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_is_handed_back() {
    let (lb, tx) = balancer(config());
    let h = Health::new();
    insert(&tx, 0, Endpoint::new(Backend::new(1000)).health(h.clone()));
    settle(&lb, 1).await;
    h.eject();
    h.probe();
    let mut lb2 = lb.clone();
    let fut = lb2.ready().await.unwrap().call(1);
    assert!(!h.try_acquire_probe(), "the call claimed the probe");
    assert_eq!(lb.endpoints()[0].pending, 1);
    drop(fut);
    assert_eq!(lb.endpoints()[0].pending, 0);
    assert!(
        h.try_acquire_probe(),
        "dropping the probe request releases it"
    );
}

#[tokio::test(start_paused = true)]
async fn removal_during_in_flight_lets_the_request_finish() {
    let (lb, tx) = balancer(config());
    let slow = Backend::new(1000);
    insert(&tx, 0, Endpoint::new(slow.clone()));
    settle(&lb, 1).await;
    let mut lb2 = lb.clone();
    let inflight = tokio::spawn(async move { lb2.ready().await.unwrap().call(1).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(slow.calls(), 1);
    tx.send(Ok(Change::Remove(0))).unwrap();
    settle(&lb, 0).await;
    assert_eq!(inflight.await.unwrap().unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn empty_set_fails_fast_after_the_configured_timeout() {
    let (lb, _tx) = balancer(Config {
        failfast_timeout: Duration::from_millis(750),
        ..config()
    });
    let start = Instant::now();
    let mut lb2 = lb.clone();
    let err = lb2.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(750));
    assert_eq!(
        err.downcast_ref::<Error>(),
        Some(&Error::NoEndpoints {
            waited: Duration::from_millis(750)
        })
    );
    assert_eq!(lb.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_wait_queue_is_bounded() {
    let (lb, _tx) = balancer(Config {
        queue_capacity: 2,
        ..config()
    });
    let mut lb2 = lb.clone();
    let mut first = lb2.call(1);
    let mut second = lb2.call(2);
    assert!((&mut first).now_or_never().is_none());
    assert!((&mut second).now_or_never().is_none());
    assert_eq!(lb.waiting(), 2);
    let third: Result<u16, BoxError> = lb2.call(3).now_or_never().expect("fails at once");
    assert_eq!(
        third.unwrap_err().downcast_ref::<Error>(),
        Some(&Error::QueueFull { capacity: 2 })
    );
    // Leaving the queue frees the places.
    drop(first);
    drop(second);
    assert_eq!(lb.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn endpoints_added_while_requests_wait_get_them() {
    let (lb, tx) = balancer(config());
    let mut waiting = Vec::new();
    for i in 0..5 {
        let mut lb = lb.clone();
        waiting.push(tokio::spawn(async move {
            lb.ready().await.unwrap().call(i).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lb.waiting(), 5);
    let b = Backend::new(10);
    insert(&tx, 0, Endpoint::new(b.clone()));
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap(), 200);
    }
    assert_eq!(b.calls(), 5);
    assert_eq!(lb.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_requests_do_not_leak_pending_load() {
    let (lb, tx) = balancer(config());
    insert(&tx, 0, Endpoint::new(Backend::new(100)));
    insert(&tx, 1, Endpoint::new(Backend::new(100)));
    settle(&lb, 2).await;
    let mut lb2 = lb.clone();
    let futs: Vec<_> = (0..10).map(|i| lb2.call(i)).collect();
    assert_eq!(lb.endpoints().iter().map(|s| s.pending).sum::<usize>(), 10);
    let r = tokio::time::timeout(
        Duration::from_millis(10),
        futures_util::future::join_all(futs),
    )
    .await;
    assert!(r.is_err(), "timed out and dropped");
    assert_eq!(lb.endpoints().iter().map(|s| s.pending).sum::<usize>(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_set_latency_summary_follows_successes() {
    let (lb, tx) = balancer(config());
    assert_eq!(lb.latency(), None);
    insert(&tx, 0, Endpoint::new(Backend::new(20)));
    insert(&tx, 1, Endpoint::new(Backend::failing(1)));
    settle(&lb, 2).await;
    load(&lb, 2, 50).await;
    let s = lb.latency().unwrap();
    // Only the 20 ms successes count; the 1 ms failures do not pull the median down.
    assert!((19..=21).contains(&s.p50.as_millis()), "{s:?}");
    assert!((19..=21).contains(&s.p95.as_millis()), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn reinserting_a_key_updates_weight_and_keeps_learned_latency() {
    let (lb, tx) = balancer(config());
    insert(&tx, 0, Endpoint::new(Backend::new(200)));
    settle(&lb, 1).await;
    load(&lb, 1, 3).await;
    insert(&tx, 0, Endpoint::new(Backend::new(200)).weight(5));
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let stats = lb.endpoints();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].weight, 5);
    assert!(
        stats[0].rtt_estimate > Duration::from_millis(150),
        "{stats:?}"
    );
}

// === every outcome is seen, retries go elsewhere, clones draw independently ===

/// Classifies the test statuses finely: 599 = connection refused, 555 = a mesh-made answer (no
/// verdict), other 5xx = failure.
#[derive(Clone, Copy, Debug)]
struct Fine;

impl crate::Classify<u16, Infallible> for Fine {
    fn is_failure(&self, r: &Result<u16, Infallible>) -> bool {
        is_5xx(r)
    }

    fn outcome(&self, r: &Result<u16, Infallible>) -> crate::Outcome {
        match r {
            Ok(599) => crate::Outcome::Refused,
            Ok(555) => crate::Outcome::NoVerdict,
            Ok(s) if *s >= 500 => crate::Outcome::Failure,
            _ => crate::Outcome::Success,
        }
    }
}

type FineLb = Balance<usize, Backend, Fine>;

fn fine_balancer(config: Config) -> (FineLb, Tx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let lb = Balance::builder(config)
        .classify(Fine)
        .spawn(UnboundedReceiverStream::new(rx))
        .unwrap();
    (lb, tx)
}

async fn settle_fine(lb: &FineLb, n: usize) {
    for _ in 0..1000 {
        if lb.len() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("endpoint set never reached {n} (is {})", lb.len());
}

/// The keys earlier attempts used, as a retry layer keeps them.
#[derive(Default)]
struct Tried(std::sync::Mutex<Vec<usize>>);

impl crate::Avoid<usize> for Tried {
    fn avoids(&self, key: &usize) -> bool {
        self.0.lock().unwrap().contains(key)
    }
    fn record(&self, key: &usize) {
        self.0.lock().unwrap().push(*key);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_endpoint_whose_requests_time_out_loses_its_share() {
    let (lb, tx) = balancer(config());
    // Endpoint 0 never answers; every request gives up after 50 ms.
    let stalled = Backend::new(3_600_000);
    insert(&tx, 0, Endpoint::new(stalled.clone()));
    for i in 1..4 {
        insert(&tx, i, Endpoint::new(Backend::new(10)));
    }
    settle(&lb, 4).await;
    let mut tasks = Vec::new();
    for w in 0..8u32 {
        let mut lb = lb.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..250 {
                let call = lb.ready().await.unwrap().call(w * 1000 + i);
                if let Ok(Ok(200)) = tokio::time::timeout(Duration::from_millis(50), call).await {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let share = stalled.calls() as f64 / 2000.0;
    assert!(
        share < 0.02,
        "the stalled endpoint drew {} of 2000 requests",
        stalled.calls()
    );
    assert!(ok >= 1960, "{ok} of 2000 succeeded");
    assert!(
        lb.endpoints()[0].rtt_estimate >= Duration::from_millis(100),
        "unanswered requests are charged: {:?}",
        lb.endpoints()[0]
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_after_its_estimate_is_charged_the_elapsed_time() {
    let (lb, tx) = balancer(config());
    insert(&tx, 0, Endpoint::new(Backend::new(3_600_000)));
    settle(&lb, 1).await;
    let mut lb2 = lb.clone();
    let call = lb2.ready().await.unwrap().call(1);
    let r = tokio::time::timeout(Duration::from_millis(400), call).await;
    assert!(r.is_err());
    // Charged 400 ms, not left at the 30 ms default to decay toward zero.
    assert!(
        lb.endpoints()[0].rtt_estimate >= Duration::from_millis(399),
        "{:?}",
        lb.endpoints()[0]
    );
}

#[tokio::test(start_paused = true)]
async fn clones_draw_independent_endpoint_sequences() {
    // 50 endpoints of equal cost: the cheaper of two is the first drawn, so a clone's picks are
    // its random sequence.
    let (lb, tx) = balancer(config());
    let backends: Vec<Backend> = (0..50).map(|_| Backend::new(0)).collect();
    for (i, b) in backends.iter().enumerate() {
        insert(&tx, i, Endpoint::new(b.clone()));
    }
    settle(&lb, 50).await;
    let mut clones: Vec<Lb> = (0..4).map(|_| lb.clone()).collect();
    let mut picks: Vec<Vec<usize>> = vec![Vec::new(); 4];
    for _ in 0..200 {
        for (k, c) in clones.iter_mut().enumerate() {
            let before: Vec<usize> = backends.iter().map(Backend::calls).collect();
            c.ready().await.unwrap().call(0).await.unwrap();
            let chosen = backends
                .iter()
                .zip(&before)
                .position(|(b, n)| b.calls() > *n)
                .unwrap();
            picks[k].push(chosen);
        }
    }
    for a in 0..4 {
        for b in 0..4 {
            if a == b {
                continue;
            }
            for shift in 0..4 {
                let same = (0..190)
                    .filter(|&m| picks[a][m + shift] == picks[b][m])
                    .count();
                assert!(
                    same < 30,
                    "clone {b} repeats clone {a}'s picks {shift} steps later: {same} of 190"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retries_avoid_the_endpoints_earlier_attempts_used() {
    let (lb, tx) = balancer(config());
    let backends: Vec<Backend> = (0..3).map(|_| Backend::failing(1)).collect();
    let healths: Vec<Health> = (0..3).map(|_| Health::new()).collect();
    for (i, b) in backends.iter().enumerate() {
        insert(&tx, i, Endpoint::new(b.clone()).health(healths[i].clone()));
    }
    settle(&lb, 3).await;
    // Two of three ejected: panic mode, every endpoint is a candidate.
    healths[0].eject();
    healths[1].eject();
    for round in 0..50 {
        let tried = Tried::default();
        let mut lb = lb.clone();
        for _ in 0..3 {
            lb.call_avoiding(round, &tried).await.unwrap();
        }
        let mut keys = tried.0.lock().unwrap().clone();
        keys.sort_unstable();
        assert_eq!(
            keys,
            vec![0, 1, 2],
            "round {round}: three attempts, three endpoints"
        );
    }
    // With every endpoint tried, the hint gives way: a fourth attempt still goes somewhere.
    let tried = Tried::default();
    let mut lb2 = lb.clone();
    for _ in 0..4 {
        lb2.call_avoiding(9, &tried).await.unwrap();
    }
    assert_eq!(tried.0.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn panic_mode_leaves_out_endpoints_refusing_connections() {
    let (lb, tx) = fine_balancer(config());
    let mut refusing = Backend::failing(1);
    refusing.status = 599;
    let dead: Vec<Backend> = (0..2)
        .map(|_| Backend {
            calls: Arc::new(AtomicUsize::new(0)),
            ..refusing.clone()
        })
        .collect();
    let live = Backend::new(10);
    let healths: Vec<Health> = (0..3).map(|_| Health::new()).collect();
    insert(
        &tx,
        0,
        Endpoint::new(dead[0].clone()).health(healths[0].clone()),
    );
    insert(
        &tx,
        1,
        Endpoint::new(dead[1].clone()).health(healths[1].clone()),
    );
    insert(
        &tx,
        2,
        Endpoint::new(live.clone()).health(healths[2].clone()),
    );
    settle_fine(&lb, 3).await;
    // Each dead endpoint refuses once, then the breaker (played here) ejects both.
    let mut lb2 = lb.clone();
    while dead.iter().any(|d| d.calls() == 0) {
        let _ = lb2.ready().await.unwrap().call(0).await;
    }
    healths[0].eject();
    healths[1].eject();
    let before: usize = dead.iter().map(Backend::calls).sum();
    for i in 0..300 {
        let _ = lb2.ready().await.unwrap().call(i).await;
    }
    let after: usize = dead.iter().map(Backend::calls).sum();
    assert_eq!(
        after - before,
        0,
        "panic mode sent requests to refusing endpoints"
    );
    assert!(live.calls() >= 300);
}

#[tokio::test(start_paused = true)]
async fn a_probed_endpoint_starts_from_a_fresh_estimate() {
    let (lb, tx) = fine_balancer(config());
    let mut flaky = Backend::failing(5);
    let h = Health::new();
    insert(&tx, 0, Endpoint::new(flaky.clone()).health(h.clone()));
    insert(&tx, 1, Endpoint::new(Backend::new(10)));
    settle_fine(&lb, 2).await;
    // Failures drive endpoint 0's estimate up to the cap, and the breaker (played here) ejects it.
    let mut lb2 = lb.clone();
    while lb.endpoints()[0].rtt_estimate < Duration::from_secs(5) {
        let _ = lb2.ready().await.unwrap().call(0).await;
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    h.eject();
    // It recovers; its probe finds it healthy.
    flaky.status = 200;
    tx.send(Ok(Change::Insert(
        0,
        Endpoint::new(flaky.clone()).health(h.clone()),
    )))
    .unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    h.probe();
    let mut probed = false;
    for i in 0..20 {
        let _ = lb2.ready().await.unwrap().call(i).await;
        if h.state() == HealthState::Probing && !h.try_acquire_probe() {
            probed = true;
            break;
        }
        h.cancel_probe();
    }
    assert!(probed, "a request took the probe");
    h.restore();
    let est = lb.endpoints()[0].rtt_estimate;
    assert!(
        est <= Duration::from_millis(31),
        "restored endpoint starts from the default estimate, not its penalty: {est:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_answered_without_verdict_is_handed_back() {
    let (lb, tx) = fine_balancer(config());
    let mut capped = Backend::new(1);
    capped.status = 555;
    let h = Health::new();
    insert(&tx, 0, Endpoint::new(capped).health(h.clone()));
    settle_fine(&lb, 1).await;
    h.eject();
    h.probe();
    let mut lb2 = lb.clone();
    let rsp = lb2.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(rsp, 555);
    assert!(
        h.try_acquire_probe(),
        "a mesh-made answer is no verdict: another request may probe"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_found_in_the_trailers_is_charged_to_the_endpoint() {
    let (lb, tx) = balancer(config());
    let h = Health::new();
    insert(&tx, 0, Endpoint::new(Backend::new(10)).health(h.clone()));
    insert(&tx, 1, Endpoint::new(Backend::new(10)));
    settle(&lb, 2).await;
    let mut lb2 = lb.clone();
    lb2.ready().await.unwrap().call(0).await.unwrap();
    // The response head looked fine; its trailers said otherwise (reported by the breaker).
    h.report_late_failure();
    for i in 0..10 {
        let _ = lb2.ready().await.unwrap().call(i).await;
    }
    assert!(
        lb.endpoints()[0].rtt_estimate >= Duration::from_millis(100),
        "charged like a failed response: {:?}",
        lb.endpoints()[0]
    );
}

// === server-reported load ===

/// Endpoints that never report keep exactly the power-of-two-choices picks, whatever
/// [`Config::choices`] says: the same seed gives the same calls with 2 and with 5 candidates.
#[tokio::test(start_paused = true)]
async fn endpoints_that_never_report_keep_the_two_choice_picks() {
    let mut counts = Vec::new();
    for choices in [2, 5] {
        let (lb, tx) = balancer(Config {
            choices,
            ..config()
        });
        let backends: Vec<Backend> = (0..6).map(|i| Backend::new(5 + 7 * i)).collect();
        for (i, b) in backends.iter().enumerate() {
            insert(&tx, i, Endpoint::new(b.clone()));
        }
        settle(&lb, 6).await;
        let statuses = load(&lb, 1, 300).await;
        assert!(statuses.iter().all(|s| *s == 200));
        counts.push(backends.iter().map(Backend::calls).collect::<Vec<_>>());
    }
    assert_eq!(counts[0], counts[1]);
}

/// An endpoint that answers with its server's load report.
#[derive(Clone)]
struct Reporting {
    backend: Backend,
    tracker: Arc<crate::LoadTracker>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Reporting {
    fn new(latency_ms: u64, capacity: u32) -> Self {
        Self {
            backend: Backend::new(latency_ms),
            tracker: Arc::new(crate::LoadTracker::new(capacity)),
            slots: Arc::new(tokio::sync::Semaphore::new(capacity as usize)),
        }
    }
}

impl Service<u32> for Reporting {
    type Response = (u16, Option<crate::LoadReport>);
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.backend.calls.fetch_add(1, Ordering::Relaxed);
        let started = crate::LoadTracker::start(&self.tracker);
        let (slots, latency) = (self.slots.clone(), self.backend.latency);
        Box::pin(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            tokio::time::sleep(latency).await;
            Ok((200, Some(started.finish(latency))))
        })
    }
}

#[derive(Clone, Copy)]
struct TakeReport;

impl crate::Classify<(u16, Option<crate::LoadReport>), Infallible> for TakeReport {
    fn is_failure(&self, r: &Result<(u16, Option<crate::LoadReport>), Infallible>) -> bool {
        matches!(r, Ok((s, _)) if *s >= 500)
    }

    fn take_load_report(
        &self,
        rsp: &mut (u16, Option<crate::LoadReport>),
    ) -> Option<Result<crate::LoadReport, crate::ReportError>> {
        rsp.1.take().map(Ok)
    }
}

/// With reports, requests go where they complete first: the 40 ms endpoint gets (almost) none,
/// and the 10 ms endpoint that serves one at a time gets requests only when it is free (a tie
/// with the one serving 8), so the big one carries most.
#[tokio::test(start_paused = true)]
async fn reports_steer_requests_by_expected_completion_time() {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut lb = Balance::builder(config())
        .classify(TakeReport)
        .spawn(UnboundedReceiverStream::new(rx))
        .unwrap();
    let eps = [
        Reporting::new(10, 8),
        Reporting::new(10, 1),
        Reporting::new(40, 8),
    ];
    for (i, ep) in eps.iter().enumerate() {
        tx.send(Ok::<_, Infallible>(Change::Insert(
            i,
            Endpoint::new(ep.clone()),
        )))
        .unwrap();
    }
    for _ in 0..1000 {
        if lb.len() == 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Open loop: a request every 2 ms for 4 s (5 in flight on average at the big fast one).
    let mut pending = Vec::new();
    for i in 0..2000 {
        pending.push(tokio::spawn(lb.ready().await.unwrap().call(i)));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for p in pending {
        assert_eq!(p.await.unwrap().unwrap().0, 200);
    }
    let calls: Vec<usize> = eps.iter().map(|e| e.backend.calls()).collect();
    assert!(calls[2] <= 10, "{calls:?}");
    assert!(calls[0] > 3 * calls[1], "{calls:?}");
    let stats = lb.endpoints();
    for s in &stats {
        let r = s.report.expect("every endpoint reported");
        let want = if s.key == 2 { 40 } else { 10 };
        assert_eq!(r.service_time, Duration::from_millis(want), "{s:?}");
        assert_eq!(s.malformed_reports, 0);
    }
}

/// Two endpoints the breaker trusts (fresh, as an endpoint file that re-adds them makes them) both
/// fail; the third is back but still ejected. Out of panic mode (2 of 3 available), a retry that
/// has tried both available ones goes to the ejected one it has not tried, not back to a failed one.
#[tokio::test(start_paused = true)]
async fn a_retry_that_tried_every_available_endpoint_tries_an_ejected_one_before_a_failed_one() {
    let (lb, tx) = balancer(config());
    let failing: Vec<Backend> = (0..2).map(|_| Backend::failing(1)).collect();
    let back = Backend::new(1);
    let healths: Vec<Health> = (0..3).map(|_| Health::new()).collect();
    for (i, b) in failing.iter().chain([&back]).enumerate() {
        insert(&tx, i, Endpoint::new(b.clone()).health(healths[i].clone()));
    }
    settle(&lb, 3).await;
    healths[2].eject();
    for round in 0..50 {
        let tried = Tried::default();
        let mut lb = lb.clone();
        for _ in 0..3 {
            lb.call_avoiding(round, &tried).await.unwrap();
        }
        let keys = tried.0.lock().unwrap().clone();
        assert_eq!(
            keys.last(),
            Some(&2),
            "round {round}: the third attempt went back to a failed endpoint: {keys:?}"
        );
    }
    // A first attempt still never goes to the ejected endpoint.
    let calls = back.calls();
    load(&lb, 2, 50).await;
    assert_eq!(back.calls(), calls);
}

#[tokio::test(start_paused = true)]
async fn a_ready_endpoint_gets_the_request_from_call_and_the_future_does_not_hold_it() {
    let (mut lb, tx) = balancer(config());
    let backend = Backend::new(10);
    insert(&tx, 0, Endpoint::new(backend.clone()));
    settle(&lb, 1).await;
    let fut = lb.ready().await.unwrap().call(1);
    assert_eq!(backend.calls(), 1, "sent from call, before the first poll");
    assert_eq!(fut.await.unwrap(), 200);
    // Neither the request nor the endpoint's service sits inline in the future: a 1 KiB request
    // leaves it the size of the endpoint's own future and the bookkeeping.
    type Big = [u8; 1024];
    type Svc = tower::util::ServiceFn<fn(Big) -> std::future::Ready<Result<u16, Infallible>>>;
    let size = std::mem::size_of::<crate::ResponseFuture<usize, Svc, Http5xx, Big>>();
    assert!(size < 128, "the balancer's future is {size} bytes");
}

/// An endpoint that is not ready until its gate opens (it keeps the last waker it was given).
#[derive(Clone, Default)]
struct Gated {
    open: Arc<std::sync::atomic::AtomicBool>,
    waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    calls: Arc<AtomicUsize>,
}

impl Gated {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

impl Service<u32> for Gated {
    type Response = u16;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u16, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(200))
    }
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_not_ready_at_once_gets_the_request_when_ready_and_wakes_the_caller() {
    let gated = Gated::default();
    let (mut lb, _tx) = one_endpoint(gated.clone(), is_5xx as Http5xx).await;
    let fut = lb.ready().await.unwrap().call(1);
    assert_eq!(gated.calls.load(Ordering::SeqCst), 0, "not ready: not sent");
    let task = tokio::spawn(fut);
    // Let the task poll once, so that the endpoint holds the task's waker, not the look's.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!task.is_finished());
    gated.open();
    let answer = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the caller was woken when the endpoint became ready")
        .unwrap();
    assert_eq!(answer.unwrap(), 200);
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
}

/// An endpoint that counts its clones and its calls; with a balancer handle in it, each call
/// first sends one request of its own through that balancer (a re-entrant call).
#[derive(Default)]
struct Counted {
    clones: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    nested: Arc<std::sync::Mutex<Option<Balance<usize, Counted, Http5xx>>>>,
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            clones: self.clones.clone(),
            calls: self.calls.clone(),
            nested: self.nested.clone(),
        }
    }
}

impl Service<u32> for Counted {
    type Response = u16;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u16, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let nested = self.nested.lock().unwrap().clone();
        // Sent from inside this call, to this endpoint again: its instance is in use.
        let inner = match (req, nested) {
            (1, Some(mut lb)) => Some(lb.call(0)),
            _ => None,
        };
        Box::pin(async move {
            if let Some(inner) = inner {
                assert_eq!(inner.await.expect("the nested request"), 200);
            }
            Ok(200)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn requests_call_the_endpoint_s_own_instance_without_cloning_it() {
    let endpoint = Counted::default();
    let (mut lb, _tx) = one_endpoint(endpoint.clone(), is_5xx as Http5xx).await;
    let at_insert = endpoint.clones.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(lb.ready().await.unwrap().call(0).await.unwrap(), 200);
    }
    assert_eq!(endpoint.calls.load(Ordering::SeqCst), 100);
    assert_eq!(
        endpoint.clones.load(Ordering::SeqCst),
        at_insert + 1,
        "one clone, the instance the first request made; none per request"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_sent_while_the_endpoint_s_instance_is_in_use_gets_a_clone_and_no_deadlock() {
    let endpoint = Counted::default();
    let (mut lb, _tx) = one_endpoint(endpoint.clone(), is_5xx as Http5xx).await;
    // The endpoint's instance exists once a request has been sent.
    assert_eq!(lb.ready().await.unwrap().call(0).await.unwrap(), 200);
    *endpoint.nested.lock().unwrap() = Some(lb.clone());
    let at_start = endpoint.clones.load(Ordering::SeqCst);
    // Request 1's call sends request 0 to the same endpoint from inside the held instance.
    let answer = tokio::time::timeout(Duration::from_secs(1), lb.ready().await.unwrap().call(1))
        .await
        .expect("no deadlock");
    assert_eq!(answer.unwrap(), 200);
    assert_eq!(endpoint.calls.load(Ordering::SeqCst), 3, "both were sent");
    assert_eq!(
        endpoint.clones.load(Ordering::SeqCst),
        at_start + 1,
        "the nested one used a clone"
    );
    endpoint.nested.lock().unwrap().take();
}

/// An endpoint whose very first readiness check fails; an instance that failed stays failed (as
/// tower's contract allows), while fresh clones are fine.
#[derive(Clone, Default)]
struct FailsOnce {
    failed_once: Arc<std::sync::atomic::AtomicBool>,
    broken: bool,
}

impl Service<u32> for FailsOnce {
    type Response = u16;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u16, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.broken || !self.failed_once.swap(true, Ordering::SeqCst) {
            self.broken = true;
            return Poll::Ready(Err("not ready, ever again".into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        std::future::ready(Ok(200))
    }
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_instance_whose_readiness_failed_is_replaced_by_a_fresh_clone() {
    type FailsOnceClassify = fn(&Result<u16, BoxError>) -> bool;
    let failures = (|r: &Result<u16, BoxError>| r.is_err()) as FailsOnceClassify;
    let (mut lb, _tx) = one_endpoint(FailsOnce::default(), failures).await;
    assert!(
        lb.ready().await.unwrap().call(1).await.is_err(),
        "the failure"
    );
    for _ in 0..3 {
        let answer = lb.ready().await.unwrap().call(1).await;
        assert_eq!(answer.expect("a fresh instance, not the failed one"), 200);
    }
}
