//! Which endpoint outcomes count as failures for the balancer's cost, and where a response carries
//! its server's load report.
//!
//! The balancer charges a failure as a slow response (see [`crate::ewma`]), so it must know what a
//! failure is. That depends on the protocol: for a plain service an `Err` is a failure
//! ([`ErrIsFailure`], the default); an HTTP client's service returns `Ok(response)` for a 503, and the
//! user says that 5xx is a failure; gRPC looks at `grpc-status`. So classification is a trait over
//! `&Result<Response, Error>`, implemented for closures. It runs once per response, on the response
//! path, and must be cheap (no allocation).
//!
//! ```
//! use mesh_balance::Classify;
//!
//! struct Status(u16);
//! let five_xx = |r: &Result<Status, std::io::Error>| match r {
//!     Ok(rsp) => rsp.0 >= 500,
//!     Err(_) => true,
//! };
//! assert!(five_xx.is_failure(&Ok(Status(503))));
//! assert!(!five_xx.is_failure(&Ok(Status(404))));
//! ```

/// What one endpoint outcome teaches the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The endpoint answered usefully: its latency is a sample of the estimate.
    Success,
    /// The endpoint failed: charged as a slow response (the failure penalty, see [`crate::ewma`]).
    Failure,
    /// The endpoint refused the connection: a failure, and in panic mode the endpoint is left out
    /// until one of its requests succeeds (a process that is not listening cannot serve).
    Refused,
    /// The answer says nothing about the endpoint (e.g. the mesh made it itself, such as a
    /// concurrency cap's 503): nothing is recorded, and a probe is handed back.
    NoVerdict,
}

/// Decides whether an endpoint's outcome is a failure.
pub trait Classify<Rsp, E>: Send + Sync + 'static {
    /// `true` if `result` should be charged to the endpoint as a failure.
    fn is_failure(&self, result: &Result<Rsp, E>) -> bool;

    /// The finer [`Outcome`] of `result`. The default is [`Outcome::Failure`] when
    /// [`Classify::is_failure`] says so, else [`Outcome::Success`]; a classifier that can tell
    /// refused connections or mesh-made answers overrides it.
    #[inline]
    fn outcome(&self, result: &Result<Rsp, E>) -> Outcome {
        if self.is_failure(result) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    /// Removes the server's load report from a response and returns it (`None`: the response has
    /// none). The default reads nothing, so the endpoint keeps the peak-EWMA cost. An HTTP
    /// classifier implements it with [`crate::report::take_from_headers`]: the report is taken off
    /// the response, so it goes no further than the hop that reads it.
    #[inline]
    fn take_load_report(
        &self,
        response: &mut Rsp,
    ) -> Option<Result<crate::report::LoadReport, crate::report::ReportError>> {
        let _ = response;
        None
    }
}

/// The default classifier: `Err` is a failure, every `Ok` is a success.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrIsFailure;

impl<Rsp, E> Classify<Rsp, E> for ErrIsFailure {
    #[inline]
    fn is_failure(&self, result: &Result<Rsp, E>) -> bool {
        result.is_err()
    }
}

impl<Rsp, E, F> Classify<Rsp, E> for F
where
    F: Fn(&Result<Rsp, E>) -> bool + Send + Sync + 'static,
{
    #[inline]
    fn is_failure(&self, result: &Result<Rsp, E>) -> bool {
        self(result)
    }
}
