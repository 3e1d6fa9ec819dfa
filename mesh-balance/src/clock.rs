//! One clock reading per call or poll, shared by the layers it passes through.
//!
//! A request through the whole stack is timed by several layers: the route, backend and endpoint
//! metrics, the retry budget's window, the balancer's load estimate, the circuit breaker's
//! success-rate window. Each used to read the clock for itself, eleven readings per request, at
//! about 30 ns each on a virtual machine: a tenth of the stack's cost. They all read it within the
//! same microsecond: on the way down, in one synchronous `call`; on the way back, in the one `poll`
//! that sees the response.
//!
//! While a [`Scope`] is open on a thread, [`now`] reads the clock once, at its first use, and
//! returns that reading to every later use; outside a scope [`now`] reads the clock every time. nginx and
//! HAProxy do the same with one cached time per turn of their event loop. The facade opens a scope
//! around its client's and router's `call` and each `poll` of their response futures; a layer used
//! on its own, without a scope above it, reads the clock as before.
//!
//! A reading is at most as old as the synchronous work done in its scope since it was taken, so
//! [`now`] is for measuring (latencies, windows, load): the layers that fire timers or decide
//! whether a deadline has passed read the clock themselves. The time is tokio's
//! ([`tokio::time::Instant`]), so a paused test clock is honoured.
//!
//! ```
//! use mesh_balance::clock;
//!
//! let scope = clock::Scope::enter();
//! let a = clock::now();
//! std::thread::sleep(std::time::Duration::from_millis(1));
//! let b = clock::now();
//! drop(scope);
//! assert_eq!(a, b, "one reading inside the scope");
//! assert!(clock::now() > b, "a fresh one outside it");
//! ```

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// The thread's cached reading.
#[derive(Clone, Copy)]
enum Cached {
    /// No scope is open: every [`now`] reads the clock.
    Off,
    /// A scope is open and has not read the clock yet.
    Open,
    /// A scope is open and read the clock at this time (also as [`nanos`] of it).
    At(Instant, u64),
}

/// The origin of [`nanos`]: ten years before the first use, so that every instant the process
/// sees, a paused test clock's included, comes after it.
static ORIGIN: OnceLock<Instant> = OnceLock::new();

fn origin() -> Instant {
    *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(10 * 365 * 86_400))
            .unwrap_or(now)
    })
}

/// `at` in nanoseconds on one scale for the whole process (since a fixed origin in the past), for
/// layers that keep time in integers: `nanos(b) - nanos(a)` is the time from `a` to `b`.
pub fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX)
}

thread_local! {
    static CACHED: Cell<Cached> = const { Cell::new(Cached::Off) };
}

/// The current time: within a [`scope`], the reading its first `now` took; outside, the clock's.
#[inline]
pub fn now() -> Instant {
    CACHED.with(|cached| match cached.get() {
        Cached::At(at, _) => at,
        Cached::Off => Instant::now(),
        Cached::Open => open(cached).0,
    })
}

/// [`now`] as [`nanos`]: within a [`Scope`], converted once with the reading.
#[inline]
pub fn now_ns() -> u64 {
    CACHED.with(|cached| match cached.get() {
        Cached::At(_, ns) => ns,
        Cached::Off => nanos(Instant::now()),
        Cached::Open => open(cached).1,
    })
}

/// Takes an open scope's reading.
fn open(cached: &Cell<Cached>) -> (Instant, u64) {
    let at = Instant::now();
    let ns = nanos(at);
    cached.set(Cached::At(at, ns));
    (at, ns)
}

/// An open scope: until it is dropped, every [`now`] on this thread shares one clock reading
/// (see the module docs).
///
/// A scope entered inside another is part of it: the outer reading is kept, and stays in force
/// when the inner scope is dropped. Dropping the scope that opened it, on return or unwinding,
/// drops the reading. It stays on the thread that entered it (it is neither `Send` nor `Sync`).
#[must_use = "the scope closes when this is dropped"]
#[derive(Debug)]
pub struct Scope {
    /// Whether this scope opened the reading, and so closes it.
    opened: bool,
    _thread: std::marker::PhantomData<*const ()>,
}

impl Scope {
    /// Opens a scope on this thread, or joins the one already open.
    #[inline]
    pub fn enter() -> Self {
        let opened = CACHED.with(|cached| match cached.get() {
            Cached::Off => {
                cached.set(Cached::Open);
                true
            }
            Cached::Open | Cached::At(..) => false,
        });
        Self {
            opened,
            _thread: std::marker::PhantomData,
        }
    }
}

impl Drop for Scope {
    #[inline]
    fn drop(&mut self) {
        if self.opened {
            CACHED.with(|cached| cached.set(Cached::Off));
        }
    }
}

/// Runs `f` in a [`Scope`].
#[inline]
pub fn scope<R>(f: impl FnOnce() -> R) -> R {
    let _scope = Scope::enter();
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pause() {
        std::thread::sleep(Duration::from_millis(2));
    }

    #[test]
    fn outside_a_scope_every_reading_is_fresh() {
        let a = now();
        pause();
        assert!(now() >= a + Duration::from_millis(2));
    }

    #[test]
    fn a_scope_reads_the_clock_at_its_first_use_and_not_when_it_opens() {
        let before = Instant::now();
        let (first, second) = scope(|| {
            pause();
            let first = now();
            pause();
            (first, now())
        });
        assert!(
            first >= before + Duration::from_millis(2),
            "read at first use, after the work before it"
        );
        assert_eq!(first, second, "shared by the later uses");
        assert!(now() >= second + Duration::from_millis(2), "fresh after");
    }

    #[test]
    fn an_inner_scope_shares_the_outer_reading_and_does_not_end_it() {
        scope(|| {
            let outer = now();
            pause();
            let inner = scope(now);
            assert_eq!(inner, outer);
            pause();
            assert_eq!(
                now(),
                outer,
                "the inner scope's end left the outer one open"
            );
        });
    }

    #[test]
    fn a_scope_that_unwinds_is_closed() {
        let unwound = std::panic::catch_unwind(|| {
            scope(|| {
                let _ = now();
                panic!("inside the scope");
            })
        });
        assert!(unwound.is_err());
        let a = now();
        pause();
        assert!(now() > a, "the panic did not leave the scope open");
    }

    #[test]
    fn each_thread_has_its_own_reading() {
        scope(|| {
            let here = now();
            pause();
            let there = std::thread::spawn(now).join().expect("thread");
            assert!(there > here, "another thread reads its own clock");
        });
    }

    #[test]
    fn nanos_measure_the_time_between_instants_and_now_ns_is_now_s() {
        let a = Instant::now();
        let b = a + Duration::from_millis(1500);
        assert_eq!(nanos(b) - nanos(a), 1_500_000_000);
        assert!(nanos(a) > 0, "the origin is well before any instant");
        scope(|| {
            assert_eq!(now_ns(), nanos(now()));
            pause();
            assert_eq!(now_ns(), nanos(now()), "one reading, both ways");
        });
        let outside = now_ns();
        assert!(outside >= nanos(a));
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_test_clock_is_honoured() {
        let a = now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(now() - a, Duration::from_secs(5));
        let b = scope(now);
        assert_eq!(b - a, Duration::from_secs(5));
        assert_eq!(now_ns() - nanos(a), 5_000_000_000);
    }
}
