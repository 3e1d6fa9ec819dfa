//! The retry budget: retries may add at most a ratio of recent requests, plus a floor.
//!
//! ## Why budgets and not max retries?
//!
//! A fixed "retry up to 3 times" multiplies load by 4 exactly when a service is failing, which
//! turns a partial outage into a full one (a retry storm). A budget bounds the *extra* load instead:
//! over a sliding window (10 s), retries may be at most `ratio` (20 %) of the requests plus a floor of
//! `min_per_sec` (10) per second of window, so that low-traffic clients can still retry. These are
//! Finagle's `RetryBudget(ttl = 10.seconds, minRetriesPerSec = 10, percentCanRetry = 0.2)`.
//!
//! ## Exact fractions
//!
//! tower's `TpsBudget` keeps deposits as whole numbers and truncates fractional ratios
//! (tower#857): with ratio 0.25, four requests should buy exactly one retry. Here every request
//! deposits `ratio × 1 000 000` micro-tokens (rounded once, when the budget is built) and a retry
//! withdraws 1 000 000, so the arithmetic is exact integer arithmetic for any ratio with six or fewer
//! decimals.
//!
//! ## Concurrency
//!
//! The window is a ring of slots (default 10 slots of 1 s); each holds atomic deposit and withdrawal
//! counters stamped with the epoch (slot number since the budget's creation) they count. No lock:
//! a request touches one slot with a couple of atomic operations; a withdrawal sums the ring. A
//! withdrawal is added first and undone if it overdraws, so concurrent withdrawals can be refused
//! spuriously at the edge but can never overspend. Each counter carries the epoch it counts in its
//! top bits (24 bits of it; the value has 40), and a slot is recycled by the first update of the new
//! epoch replacing the old epoch's value in the same compare-and-swap, so no update racing a
//! recycle is ever erased (an earlier design reset the counters with plain stores after switching
//! the slot's epoch, which could erase a concurrent withdrawal and let the budget overspend).
//!
//! ```
//! use mesh_core::retry::{Budget, BudgetConfig};
//!
//! let budget = Budget::new(BudgetConfig { min_per_sec: 0, ratio: 0.25, ..Default::default() }).unwrap();
//! for _ in 0..4 { budget.deposit(); }
//! assert!(budget.withdraw());
//! assert!(!budget.withdraw());
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Micro-tokens per retry.
const SCALE: u64 = 1_000_000;

/// Configuration of a [`Budget`]. `Default` = Finagle's: 10 s window, 10 retries/s floor, 20 %.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// How long a request's deposit counts (Finagle's `ttl`).
    pub window: Duration,
    /// Retries per second of window always allowed, whatever the traffic (`minRetriesPerSec`).
    pub min_per_sec: u32,
    /// Retries allowed per request (`percentCanRetry`), in `0.0..=1000.0`.
    pub ratio: f64,
    /// Number of slots the window is divided into (the window slides in steps of
    /// `window / slots`).
    pub slots: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.2,
            slots: 10,
        }
    }
}

/// An invalid [`BudgetConfig`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BudgetConfigError {
    /// The window must be at least 1 ms per slot.
    #[error("window {window:?} must be at least 1ms per slot ({slots} slots)")]
    Window {
        /// The window.
        window: Duration,
        /// The slots.
        slots: u32,
    },
    /// The ratio must be finite, in `0.0..=1000.0`.
    #[error("ratio {0} must be a finite number in 0.0..=1000.0")]
    Ratio(f64),
    /// Slots must be in `1..=1000`.
    #[error("slots {0} must be in 1..=1000")]
    Slots(u32),
}

// === impl BudgetConfig ===

impl BudgetConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), BudgetConfigError> {
        if !(1..=1000).contains(&self.slots) {
            return Err(BudgetConfigError::Slots(self.slots));
        }
        if !self.ratio.is_finite() || !(0.0..=1000.0).contains(&self.ratio) {
            return Err(BudgetConfigError::Ratio(self.ratio));
        }
        if self.window < Duration::from_millis(u64::from(self.slots)) {
            return Err(BudgetConfigError::Window {
                window: self.window,
                slots: self.slots,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Slot {
    epoch: AtomicU64,
    deposits: Counter,
    withdrawals: Counter,
}

/// A slot's counter: the low 40 bits hold the value, the top 24 bits the epoch it counts.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

const VALUE_BITS: u32 = 40;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
const TAG_MASK: u64 = (1 << (64 - VALUE_BITS)) - 1;

// === impl Counter ===

impl Counter {
    fn tag(epoch: u64) -> u64 {
        epoch & TAG_MASK
    }

    /// Whether tag `a` is a later epoch than tag `b` (modulo the tag's range).
    fn later(a: u64, b: u64) -> bool {
        let d = a.wrapping_sub(b) & TAG_MASK;
        d != 0 && d < TAG_MASK / 2
    }

    /// Adds `delta` for `epoch`: an older epoch's value is replaced (the slot is recycled) in the
    /// same atomic step; a later epoch's is left alone (this update is too late to count, and
    /// `false` says so).
    fn add(&self, epoch: u64, delta: u64) -> bool {
        let tag = Self::tag(epoch);
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (cur_tag, value) = (cur >> VALUE_BITS, cur & VALUE_MASK);
            let value = if cur_tag == tag {
                value.saturating_add(delta).min(VALUE_MASK)
            } else if Self::later(cur_tag, tag) {
                return false;
            } else {
                delta.min(VALUE_MASK)
            };
            let new = (tag << VALUE_BITS) | value;
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Takes back `delta` added for `epoch` (nothing if the slot was recycled since).
    fn sub(&self, epoch: u64, delta: u64) {
        let tag = Self::tag(epoch);
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur >> VALUE_BITS != tag {
                return;
            }
            let new = (tag << VALUE_BITS) | (cur & VALUE_MASK).saturating_sub(delta);
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// The value counted for `epoch` (zero if the counter holds another epoch's).
    fn get(&self, epoch: u64) -> u64 {
        let cur = self.0.load(Ordering::Acquire);
        if cur >> VALUE_BITS == Self::tag(epoch) {
            cur & VALUE_MASK
        } else {
            0
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// When the budget was made, as [`mesh_balance::clock::nanos`].
    start_ns: u64,
    slot_ns: u64,
    slots: Box<[Slot]>,
    deposit: u64,
    reserve: u64,
}

/// A retry budget shared by the clones of a retry (and hedge) layer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Budget(Arc<Inner>);

// === impl Budget ===

impl Budget {
    /// A budget with the given configuration.
    pub fn new(config: BudgetConfig) -> Result<Self, BudgetConfigError> {
        config.validate()?;
        let slots = u64::from(config.slots);
        let window_ns = u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX);
        // Rounded once; exact for ratios with up to six decimals. Bounded by validate().
        let deposit = (config.ratio * SCALE as f64).round() as u64;
        let window_secs = config.window.as_secs_f64();
        let reserve = (f64::from(config.min_per_sec) * window_secs * SCALE as f64).round() as u64;
        Ok(Self(Arc::new(Inner {
            start_ns: mesh_balance::clock::nanos(Instant::now()),
            slot_ns: (window_ns / slots).max(1),
            // Epoch 0 is the first real epoch; mark every slot stale with u64::MAX.
            slots: (0..slots)
                .map(|_| Slot {
                    epoch: AtomicU64::new(u64::MAX),
                    ..Slot::default()
                })
                .collect(),
            deposit,
            reserve,
        })))
    }

    fn epoch(&self) -> u64 {
        mesh_balance::clock::now_ns().saturating_sub(self.0.start_ns) / self.0.slot_ns
    }

    /// The slot for the current epoch, marked with it if it held an older one (its counters
    /// recycle themselves on their next update).
    fn current(&self, epoch: u64) -> &Slot {
        let n = self.0.slots.len() as u64;
        let slot = &self.0.slots[(epoch % n) as usize];
        let mut seen = slot.epoch.load(Ordering::Acquire);
        while seen == u64::MAX || seen < epoch {
            match slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
        slot
    }

    /// Records a request (every original request deposits; retries do not).
    pub fn deposit(&self) {
        let epoch = self.epoch();
        // A deposit too late for its slot (the thread stalled for a whole window) is dropped.
        let _ = self.current(epoch).deposits.add(epoch, self.0.deposit);
    }

    /// The balance in micro-tokens: reserve + deposits − withdrawals over the window.
    fn balance(&self, epoch: u64) -> i128 {
        let n = self.0.slots.len() as u64;
        let mut balance = i128::from(self.0.reserve);
        for slot in self.0.slots.iter() {
            let e = slot.epoch.load(Ordering::Acquire);
            if e <= epoch && epoch - e < n {
                balance += i128::from(slot.deposits.get(e));
                balance -= i128::from(slot.withdrawals.get(e));
            }
        }
        balance
    }

    /// Tries to spend one retry; `false` when the budget is exhausted.
    pub fn withdraw(&self) -> bool {
        let epoch = self.epoch();
        let slot = self.current(epoch);
        if !slot.withdrawals.add(epoch, SCALE) {
            return false;
        }
        if self.balance(epoch) >= 0 {
            true
        } else {
            slot.withdrawals.sub(epoch, SCALE);
            false
        }
    }

    /// Whole retries available now.
    pub fn available(&self) -> u64 {
        let b = self.balance(self.epoch());
        u64::try_from(b.max(0) / i128::from(SCALE)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn budget(min_per_sec: u32, ratio: f64) -> Budget {
        Budget::new(BudgetConfig {
            min_per_sec,
            ratio,
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_ratio_is_exact() {
        let b = budget(0, 0.25);
        for _ in 0..3 {
            b.deposit();
        }
        assert!(!b.withdraw(), "3 × 0.25 is less than one retry");
        b.deposit();
        assert!(b.withdraw(), "4 × 0.25 is exactly one retry");
        assert!(!b.withdraw());

        let b = budget(0, 0.1);
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw(), "10 × 0.1 is exactly one retry");
        assert!(!b.withdraw());

        let b = budget(0, 1.5);
        for _ in 0..2 {
            b.deposit();
        }
        assert_eq!(b.available(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_retries_without_traffic() {
        let b = budget(10, 0.2);
        assert_eq!(b.available(), 100, "10/s over a 10 s window");
        for _ in 0..100 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_with_the_window() {
        let b = budget(0, 0.5);
        for _ in 0..4 {
            b.deposit();
        }
        assert_eq!(b.available(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        b.deposit();
        b.deposit();
        assert_eq!(b.available(), 3);
        tokio::time::advance(Duration::from_millis(5500)).await;
        // The first four deposits are older than the window now.
        assert_eq!(b.available(), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_expire_too() {
        let b = budget(1, 0.0);
        assert_eq!(b.available(), 10);
        for _ in 0..10 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.available(), 10);
    }

    #[test]
    fn config_is_validated() {
        let bad = |c: BudgetConfig| Budget::new(c).unwrap_err().to_string();
        assert_eq!(
            bad(BudgetConfig {
                ratio: f64::NAN,
                ..Default::default()
            }),
            "ratio NaN must be a finite number in 0.0..=1000.0"
        );
        assert_eq!(
            bad(BudgetConfig {
                slots: 0,
                ..Default::default()
            }),
            "slots 0 must be in 1..=1000"
        );
        assert!(bad(BudgetConfig {
            window: Duration::ZERO,
            ..Default::default()
        })
        .starts_with("window 0ns"));
    }

    /// A withdrawal made while its slot is being recycled for a new epoch is counted, however
    /// the threads interleave: after every epoch step, the budget's balance is exactly the reserve
    /// minus the retries it granted, and draining it at the end grants exactly the reserve.
    ///
    /// Several threads withdraw at the same instant right after the clock (paused, shared through
    /// the runtime handle) enters a new epoch, so one of them recycles the slot while the others
    /// withdraw into it. An earlier design reset a recycled slot's counters with plain stores after
    /// switching its epoch, erasing withdrawals that landed in between: the balance then came out
    /// higher than reserve − granted (a retry granted for free; the budget overspends) or, when the
    /// erased withdrawal was then undone, wrapped far below zero. Epochs are stepped by the test,
    /// never by the wall clock, and every wait is bounded, so the check holds on a loaded machine.
    #[test]
    fn withdrawals_racing_slot_recycling_are_never_erased() {
        const THREADS: u64 = 4;
        const PER_EPOCH: u64 = 2;
        const SLOTS: u32 = 1000;
        const RUNS: usize = 3;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let _enter = rt.enter();
        let slot = Duration::from_millis(1);
        let reserve = u64::from(SLOTS) * THREADS * PER_EPOCH;
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        let mut granted = 0;
        for _ in 0..RUNS {
            // Every epoch of a run lies within one window, so nothing expires: the balance is the
            // reserve minus what was granted.
            let budget = Budget::new(BudgetConfig {
                window: slot * SLOTS,
                slots: SLOTS,
                min_per_sec: u32::try_from(reserve).unwrap(),
                ratio: 0.0,
            })
            .unwrap();
            let epoch = AtomicU64::new(0);
            let arrived = AtomicU64::new(0);
            let successes = AtomicU64::new(0);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let mut wrong = None;
            std::thread::scope(|scope| {
                for _ in 0..THREADS {
                    scope.spawn(|| {
                        let _enter = handle.enter();
                        for e in 1..u64::from(SLOTS) {
                            let mut spins = 0u32;
                            while epoch.load(Ordering::Acquire) < e {
                                if stop.load(Ordering::Acquire) {
                                    return;
                                }
                                spins += 1;
                                if spins % 64 == 0 {
                                    std::thread::yield_now();
                                }
                                std::hint::spin_loop();
                            }
                            for _ in 0..PER_EPOCH {
                                if budget.withdraw() {
                                    successes.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            arrived.fetch_add(1, Ordering::AcqRel);
                        }
                    });
                }
                'epochs: for e in 1..u64::from(SLOTS) {
                    rt.block_on(tokio::time::advance(slot));
                    epoch.store(e, Ordering::Release);
                    while arrived.load(Ordering::Acquire) < e * THREADS {
                        if std::time::Instant::now() > give_up {
                            wrong = Some(format!("epoch {e}: workers stalled"));
                            break 'epochs;
                        }
                        std::thread::yield_now();
                    }
                    let spent = successes.load(Ordering::Relaxed);
                    let available = budget.available();
                    if available != reserve - spent {
                        wrong = Some(format!(
                            "epoch {e}: {spent} retries granted from a reserve of {reserve}, \
                             so {} must be left, but the budget has {available}",
                            reserve - spent
                        ));
                        break;
                    }
                }
                stop.store(true, Ordering::Release);
            });
            if let Some(wrong) = wrong {
                panic!("{wrong}");
            }
            let mut spent = successes.load(Ordering::Relaxed);
            while budget.withdraw() {
                spent += 1;
            }
            assert_eq!(spent, reserve, "the budget granted more than its reserve");
            granted += spent;
        }
        assert_eq!(granted, reserve * RUNS as u64);
    }

    #[test]
    fn a_recycled_counter_starts_from_the_new_epochs_update() {
        let c = Counter::default();
        assert!(c.add(3, 5));
        assert_eq!(c.get(3), 5);
        assert!(c.add(13, 2), "a later epoch recycles the counter");
        assert_eq!((c.get(3), c.get(13)), (0, 2));
        assert!(
            !c.add(3, 1),
            "a late update of an older epoch does not count"
        );
        c.sub(13, 1);
        assert_eq!(c.get(13), 1);
    }
}
