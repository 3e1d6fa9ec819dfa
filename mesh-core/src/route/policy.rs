//! Per-route policy read by the resilience layers.

use std::sync::Arc;
use std::time::Duration;

use super::RouteError;
use crate::classify::{Classifier, ClassifyOverride, Preset};
use crate::deadline::RouteTimeout;
use crate::hedge::{HedgeDelay, NoHedge};
use crate::retry::{Budget, BudgetConfig, NoRetry};

/// What the resilience layers should do for requests on one route. Every field is optional: `None`
/// means "use the layer's own default" (docs/design.md "Resilience"), so an empty policy changes nothing.
///
/// The router puts the chosen route's policy into the request extensions (inside
/// [`RouteTarget`](super::RouteTarget)), and with it the extensions each layer reads (made once
/// per route, see [`PolicyExtensions`]): the deadline layer's [`RouteTimeout`], the retry layer's
/// [`NoRetry`] and [`RouteBudget`], the classifier's [`ClassifyOverride`], the hedge layer's
/// [`HedgeDelay`] or [`NoHedge`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePolicy {
    /// Total time allowed for a request on this route (the deadline layer takes the earliest of
    /// this and any incoming deadline).
    pub timeout: Option<Duration>,
    /// Retries for this route; `None` keeps the retry layer's defaults.
    pub retry: Option<RouteRetry>,
    /// How responses are classified; `None` keeps the classifier's default
    /// ([`Classification::RetryableIdempotent5xx`]).
    pub classification: Option<Classification>,
    /// Hedging; `None` means no hedged requests on this route.
    pub hedge: Option<HedgePolicy>,
    /// The HTTP version requests on this route are sent to endpoints with; `None` keeps the
    /// client's choice (by default, the request's own version).
    pub protocol: Option<Protocol>,
}

/// The HTTP version a request is sent to an endpoint with. Set per client, per endpoint (the
/// discovery label `protocol = http1 | http2`), per route ([`RoutePolicy::protocol`]) or per
/// request (this type as a request extension); the most specific wins.
///
/// HTTP/2 is spoken with prior knowledge in plaintext and negotiated by ALPN (`h2` only) over
/// TLS; HTTP/1.1 offers only `http/1.1` in ALPN, so an HTTP/1 request never rides an HTTP/2
/// connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The request's own version: HTTP/2 requests over HTTP/2, others over HTTP/1.1 (default).
    #[default]
    Auto,
    /// HTTP/1.1, whatever the request's version.
    Http1,
    /// HTTP/2, whatever the request's version (gRPC needs it).
    Http2,
}

impl Protocol {
    /// The protocol named by `value` (`http1`, `http/1.1`, `h1`; `http2`, `h2`; `auto`),
    /// case-insensitively; `None` for anything else.
    pub fn from_name(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Protocol::Auto),
            "http1" | "http/1.1" | "h1" | "http1.1" => Some(Protocol::Http1),
            "http2" | "h2" | "h2c" | "http/2" => Some(Protocol::Http2),
            _ => None,
        }
    }

    /// Whether a request of `version` goes over HTTP/2 under this choice.
    pub fn is_http2(self, version: http::Version) -> bool {
        match self {
            Protocol::Auto => version == http::Version::HTTP_2,
            Protocol::Http1 => false,
            Protocol::Http2 => true,
        }
    }
}

/// Retry settings for a route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRetry {
    /// Whether failed requests on this route may be retried at all.
    pub enabled: bool,
    /// A budget for this route instead of the shared one.
    pub budget: Option<BudgetOverride>,
}

/// A retry budget for one route, in Finagle's `RetryBudget` terms (defaults: ttl 10 s, 10 retries
/// per second, 20 %).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetOverride {
    /// How long a deposit counts.
    pub ttl: Duration,
    /// Retries always allowed per second.
    pub min_retries_per_sec: u32,
    /// Fraction of requests that may be retried on top of that, in `[0, 1000]` (0.2 = 20 %).
    pub percent_can_retry: f64,
}

impl Default for BudgetOverride {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 10,
            percent_can_retry: 0.2,
        }
    }
}

/// Response classification presets, named after Linkerd 1's response classifiers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    /// 5xx are failures; 502, 503, 504 and connection errors are retryable for idempotent methods
    /// (`io.l5d.http.retryableIdempotent5XX`, the default).
    RetryableIdempotent5xx,
    /// Like the above but only for read methods (GET, HEAD, OPTIONS, TRACE)
    /// (`io.l5d.http.retryableRead5XX`).
    RetryableRead5xx,
    /// 5xx are failures; nothing is retryable (`io.l5d.http.nonRetryable5XX`).
    NonRetryable5xx,
    /// Every response is a success (`io.l5d.http.allSuccessful`).
    AllSuccessful,
    /// gRPC: by `grpc-status` (gRFC A6; UNAVAILABLE is retryable).
    Grpc,
    /// A classifier registered under this name elsewhere in the configuration.
    Named(Arc<str>),
}

/// Hedging: after `delay` (or the endpoint set's observed latency percentile), send a second copy
/// of an idempotent request and take the first response; hedges are charged to the retry budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HedgePolicy {
    /// Latency percentile after which to hedge, in `(0, 1)` (default 0.95).
    pub percentile: f64,
    /// A fixed delay instead of the percentile (`None`: use the percentile).
    pub delay: Option<Duration>,
    /// Most extra copies per request (default 1).
    pub max_hedges: u32,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self {
            percentile: 0.95,
            delay: None,
            max_hedges: 1,
        }
    }
}

/// A retry budget of one route, as a request extension: the retry and hedge layers withdraw from
/// it (and deposit into it) instead of their shared budget, so one route's retries cannot spend
/// another's.
#[derive(Clone, Debug)]
pub struct RouteBudget(pub Budget);

/// The request extensions a [`RoutePolicy`] stands for, made once per route (a route's budget is
/// one [`Budget`] shared by all its requests) and inserted by the router into each request routed
/// there. Zero-sized markers cost no allocation.
#[derive(Clone, Debug, Default)]
pub struct PolicyExtensions {
    timeout: Option<RouteTimeout>,
    no_retry: bool,
    budget: Option<RouteBudget>,
    classify: Option<ClassifyOverride>,
    hedge: Option<HedgeDelay>,
}

// === impl PolicyExtensions ===

impl PolicyExtensions {
    /// The extensions for `policy` (validated).
    ///
    /// A [`Classification::Named`] classifier is not known here and leaves the client's in place;
    /// a hedge percentile other than the default 0.95 is hedged at the observed p95 (the latency
    /// estimate keeps only that one). A policy without hedging turns hedging off for the route.
    pub fn new(policy: &RoutePolicy) -> Result<Self, RouteError> {
        policy.validate()?;
        let budget = match &policy.retry {
            Some(RouteRetry {
                budget: Some(b), ..
            }) => {
                let config = BudgetConfig {
                    window: b.ttl,
                    min_per_sec: b.min_retries_per_sec,
                    ratio: b.percent_can_retry,
                    ..BudgetConfig::default()
                };
                let budget = Budget::new(config).map_err(|_| RouteError::InvalidPolicy {
                    what: "retry budget is out of range",
                })?;
                Some(RouteBudget(budget))
            }
            _ => None,
        };
        let classify = policy.classification.as_ref().and_then(|c| {
            let preset = match c {
                Classification::RetryableIdempotent5xx | Classification::Grpc => {
                    Preset::RetryableIdempotent5xx
                }
                Classification::RetryableRead5xx => Preset::RetryableRead5xx,
                Classification::NonRetryable5xx => Preset::NonRetryable5xx,
                Classification::AllSuccessful => Preset::AllSuccessful,
                Classification::Named(_) => return None,
            };
            Some(ClassifyOverride(Classifier::new(preset).shared()))
        });
        let hedge = policy.hedge.as_ref().map(|h| match h.delay {
            Some(delay) => HedgeDelay::Fixed(delay),
            None => HedgeDelay::P95 {
                min: Duration::from_millis(10),
                fallback: Duration::from_millis(100),
            },
        });
        Ok(PolicyExtensions {
            timeout: policy.timeout.map(RouteTimeout),
            no_retry: policy.retry.as_ref().is_some_and(|r| !r.enabled),
            budget,
            classify,
            hedge,
        })
    }

    /// Inserts the extensions into a request's.
    pub fn apply(&self, extensions: &mut http::Extensions) {
        if let Some(timeout) = self.timeout {
            extensions.insert(timeout);
        }
        if self.no_retry {
            extensions.insert(NoRetry);
        }
        if let Some(budget) = &self.budget {
            extensions.insert(budget.clone());
        }
        if let Some(classify) = &self.classify {
            extensions.insert(classify.clone());
        }
        match self.hedge {
            Some(delay) => {
                extensions.insert(delay);
            }
            None => {
                extensions.insert(NoHedge);
            }
        }
    }
}

// === impl RoutePolicy ===

impl RoutePolicy {
    /// Checks that the values are usable (positive timeout, percentile in range, ...).
    pub fn validate(&self) -> Result<(), RouteError> {
        let bad = |what: &'static str| Err(RouteError::InvalidPolicy { what });
        if self.timeout == Some(Duration::ZERO) {
            return bad("timeout must be above zero");
        }
        if let Some(RouteRetry {
            budget: Some(b), ..
        }) = &self.retry
        {
            if b.ttl < Duration::from_secs(1) || b.ttl > Duration::from_secs(60) {
                return bad("retry budget ttl must be within [1s, 60s]");
            }
            if !(0.0..=1000.0).contains(&b.percent_can_retry) {
                return bad("retry budget percent_can_retry must be within [0, 1000]");
            }
        }
        if let Some(h) = &self.hedge {
            if !(h.percentile > 0.0 && h.percentile < 1.0) {
                return bad("hedge percentile must be within (0, 1)");
            }
            if h.max_hedges == 0 {
                return bad("hedge max_hedges must be at least 1");
            }
        }
        Ok(())
    }
}
