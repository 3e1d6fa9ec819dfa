//! One endpoint: where to connect, how much traffic it gets, what it is, and who it must be.
//!
//! An [`Endpoint`] is plain data. The balancer turns each one into its own `tower::Service` (its
//! own connection pool, breaker, EWMA and TLS identity check), so everything a per-endpoint layer
//! needs to know travels here:
//!
//! - `addr`: the socket address to connect to; it is also the key of the endpoint in a set.
//! - `weight`: relative share of traffic, default `1.0`. The balancer divides an endpoint's cost
//!   by its weight, so weight `2.0` takes about twice the load of weight `1.0`. Weight `0.0`
//!   means *drained*: the endpoint stays known (in-flight requests finish, metrics keep their
//!   labels) but gets no new requests. Weights must be finite and `>= 0`.
//! - `labels`: free-form, sorted `key = value` pairs such as `version = v2` or `zone = eu-1`, for
//!   routing and metrics.
//! - `identity`: the SPIFFE ID (`spiffe://trust-domain/ns/NS/sa/SA`) the endpoint's TLS
//!   certificate must carry. `None` means discovery does not know; the TLS layer decides whether
//!   that is acceptable. It is a string here so that discovery does not depend on the TLS crate.
//!
//! ```
//! use mesh_discovery::Endpoint;
//!
//! let ep = Endpoint::new("10.0.0.7:8080".parse().unwrap())
//!     .with_weight(2.0)
//!     .with_label("version", "v2")
//!     .with_identity("spiffe://cluster.local/ns/shop/sa/web");
//! assert!(ep.validate().is_ok());
//! assert_eq!(ep.label("version"), Some("v2"));
//! ```

use std::{collections::BTreeMap, fmt, net::SocketAddr};

use crate::DiscoveryError;

/// The default weight of an endpoint: `1.0`.
pub const DEFAULT_WEIGHT: f64 = 1.0;

/// One place to send requests. See the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// Address to connect to; unique within an [`EndpointSet`](crate::EndpointSet).
    pub addr: SocketAddr,
    /// Relative share of traffic; finite and `>= 0`; `0` = drained. Default `1.0`.
    pub weight: f64,
    /// Sorted labels (`version`, `zone`, ...).
    pub labels: BTreeMap<String, String>,
    /// Expected TLS identity, a SPIFFE URI (`spiffe://...`).
    pub identity: Option<String>,
}

// === impl Endpoint ===

impl Endpoint {
    /// An endpoint at `addr` with weight 1, no labels and no expected identity.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: DEFAULT_WEIGHT,
            labels: BTreeMap::new(),
            identity: None,
        }
    }

    /// Sets the weight (checked by [`validate`](Self::validate), not here).
    pub fn with_weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// Adds or replaces one label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the expected TLS identity (a `spiffe://` URI).
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// The value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// True when the endpoint is drained (weight 0): known, but given no new requests.
    pub fn is_drained(&self) -> bool {
        self.weight == 0.0
    }

    /// Checks the weight (finite, `>= 0`) and the identity (a `spiffe://` URI with a trust
    /// domain, no whitespace).
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        check_weight(self.weight).map_err(|reason| {
            DiscoveryError::invalid(format!("{}.weight", self.addr), self.weight, reason)
        })?;
        if let Some(id) = &self.identity {
            check_identity(id).map_err(|reason| {
                DiscoveryError::invalid(format!("{}.identity", self.addr), id, reason)
            })?;
        }
        Ok(())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (weight {}", self.addr, self.weight)?;
        for (k, v) in &self.labels {
            write!(f, ", {k}={v}")?;
        }
        if let Some(id) = &self.identity {
            write!(f, ", identity {id}")?;
        }
        f.write_str(")")
    }
}

/// `Ok` when `weight` is a valid endpoint weight; otherwise the reason.
pub(crate) fn check_weight(weight: f64) -> Result<(), &'static str> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(())
    } else {
        Err("weight must be a finite number >= 0 (0 = drained)")
    }
}

/// `Ok` when `id` looks like a SPIFFE ID; otherwise the reason.
/// Checks a SPIFFE ID with the validator mutual TLS uses (`mesh-identity`), so an identity this
/// crate accepts is never rejected later by the TLS connector (which would silently drop the
/// endpoint).
pub(crate) fn check_identity(id: &str) -> Result<(), String> {
    mesh_identity::validate(id)
        .map(drop)
        .map_err(|e| format!("not a SPIFFE ID (spiffe://trust-domain/path) {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 80)))
    }

    #[test]
    fn weight_must_be_finite_and_not_negative() {
        assert!(ep().validate().is_ok());
        assert!(ep().with_weight(0.0).validate().is_ok());
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let err = ep()
                .with_weight(bad)
                .validate()
                .expect_err("bad weight accepted");
            assert!(err.to_string().contains("weight"), "{err}");
        }
    }

    #[test]
    fn identity_must_be_a_spiffe_id_that_tls_accepts() {
        assert!(ep()
            .with_identity("spiffe://td/ns/a/sa/b")
            .validate()
            .is_ok());
        for bad in [
            "https://td/x",
            "spiffe://",
            "spiffe:///ns",
            "spiffe://td/a b",
            // Rejected by mutual TLS, so discovery must reject them too (one validator).
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://td:8443/ns/a",
            "spiffe://td/ns/a/",
        ] {
            let err = ep().with_identity(bad).validate().expect_err(bad);
            assert!(err.to_string().contains("identity"), "{err}");
        }
    }

    #[test]
    fn drained_is_weight_zero() {
        assert!(ep().with_weight(0.0).is_drained());
        assert!(!ep().is_drained());
    }

    #[test]
    fn display_lists_labels_in_order() {
        let e = ep().with_label("zone", "b").with_label("version", "v2");
        assert_eq!(e.to_string(), "127.0.0.1:80 (weight 1, version=v2, zone=b)");
    }
}
