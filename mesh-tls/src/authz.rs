//! Authorization by workload identity: a `tower::Layer` that lets a request through only if the
//! caller's verified [`PeerIdentity`] is allowed by an [`AuthzPolicy`].
//!
//! A policy allows identities by exact match, by trust domain, or by path prefix (per segment:
//! `spiffe://td/ns/prod` allows `spiffe://td/ns/prod/sa/api`, not `spiffe://td/ns/production`).
//! The default policy allows nobody (deny by default, as a request that matches no rule of an
//! Istio `ALLOW` policy, or Linkerd's `deny` default policy): a server states whom it serves.
//! Plaintext callers (permissive mode) are denied unless
//! [`allow_unauthenticated`](AuthzPolicy::allow_unauthenticated) is set.
//!
//! A denied request gets `403 Forbidden` with an empty body; the reason (who was denied and
//! why) is logged with `tracing` at `warn`, never sent, so a caller cannot probe the policy.
//! Checking is a scan of short lists of `Arc<str>`-backed identities: no allocation per request.
//!
//! The layer expects the [`PeerIdentity`] extension that
//! [`serve_connection`](crate::server::serve_connection) inserts; a request without it is denied
//! (the server was wired without mesh-tls), which fails closed.
//!
//! # Example
//! ```
//! use mesh_tls::authz::{Authorize, AuthzPolicy};
//! use mesh_tls::Identity;
//!
//! let policy = AuthzPolicy::default()
//!     .allow_identity(Identity::parse("spiffe://example.org/ns/web/sa/frontend")?)
//!     .allow_path_prefix(Identity::parse("spiffe://example.org/ns/ops")?)
//!     .allow_trust_domain("partner.example.com")?;
//! let layer = Authorize::layer(policy)?;
//! let svc = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! # drop(svc);
//! # Ok::<(), mesh_tls::TlsError>(())
//! ```

use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::error::TlsError;
use crate::identity::{check_trust_domain, Identity, PeerIdentity};

/// Whom a server accepts requests from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthzPolicy {
    /// Identities allowed exactly.
    pub identities: Vec<Identity>,
    /// Trust domains whose every identity is allowed.
    pub trust_domains: Vec<String>,
    /// Identities allowed together with everything below them (segment-wise path prefix).
    pub path_prefixes: Vec<Identity>,
    /// Whether callers without an identity (plaintext, permissive mode) are allowed. Default false.
    pub allow_unauthenticated: bool,
}

/// Why a request was denied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The request has no [`PeerIdentity`] extension (served without mesh-tls).
    #[error("request carries no PeerIdentity (server not wired through mesh-tls)")]
    NoPeerIdentity,
    /// The caller connected without TLS and the policy requires an identity.
    #[error("caller is unauthenticated (plaintext connection)")]
    Unauthenticated,
    /// The caller's identity matches no rule.
    #[error("identity {0} is not allowed by the policy")]
    NotAllowed(Identity),
}

/// The authorization middleware; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    policy: Arc<AuthzPolicy>,
}

/// The [`Layer`] producing [`Authorize`].
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    policy: Arc<AuthzPolicy>,
}

// === impl AuthzPolicy ===

impl AuthzPolicy {
    /// Allows `identity` exactly.
    pub fn allow_identity(mut self, identity: Identity) -> Self {
        self.identities.push(identity);
        self
    }

    /// Allows every identity of `trust_domain` (validated as in a SPIFFE ID).
    pub fn allow_trust_domain(mut self, trust_domain: &str) -> Result<Self, TlsError> {
        validate_trust_domain(trust_domain)?;
        self.trust_domains.push(trust_domain.to_owned());
        Ok(self)
    }

    /// Allows `prefix` and every identity below it in the same trust domain.
    pub fn allow_path_prefix(mut self, prefix: Identity) -> Self {
        self.path_prefixes.push(prefix);
        self
    }

    /// Allows (or not) callers without an identity.
    pub fn allow_unauthenticated(mut self, allow: bool) -> Self {
        self.allow_unauthenticated = allow;
        self
    }

    /// Checks the trust domain names (identities are valid by construction).
    pub fn validate(&self) -> Result<(), TlsError> {
        self.trust_domains
            .iter()
            .try_for_each(|td| validate_trust_domain(td))
    }

    /// Decides for a request's peer (`None` if the extension is missing).
    pub fn check(&self, peer: Option<&PeerIdentity>) -> Result<(), Denial> {
        let identity = match peer {
            None => return Err(Denial::NoPeerIdentity),
            Some(PeerIdentity(None)) if self.allow_unauthenticated => return Ok(()),
            Some(PeerIdentity(None)) => return Err(Denial::Unauthenticated),
            Some(PeerIdentity(Some(id))) => id,
        };
        let allowed = self.identities.iter().any(|id| id == identity)
            || self
                .trust_domains
                .iter()
                .any(|td| td == identity.trust_domain())
            || self
                .path_prefixes
                .iter()
                .any(|prefix| identity.starts_with(prefix));
        if allowed {
            Ok(())
        } else {
            Err(Denial::NotAllowed(identity.clone()))
        }
    }
}

fn validate_trust_domain(td: &str) -> Result<(), TlsError> {
    check_trust_domain(td).map_err(|(offset, reason)| TlsError::InvalidTrustDomain {
        input: td.to_owned(),
        offset,
        reason,
    })
}

// === impl Authorize ===

impl Authorize<()> {
    /// A layer applying `policy` (validated); same as [`AuthorizeLayer::new`].
    pub fn layer(policy: AuthzPolicy) -> Result<AuthorizeLayer, TlsError> {
        AuthorizeLayer::new(policy)
    }
}

impl<S> Authorize<S> {
    /// Wraps `inner` with `policy` (validated).
    pub fn new(inner: S, policy: AuthzPolicy) -> Result<Self, TlsError> {
        policy.validate()?;
        Ok(Authorize {
            inner,
            policy: Arc::new(policy),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &AuthzPolicy {
        &self.policy
    }
}

impl<S, ReqB, RspB> Service<Request<ReqB>> for Authorize<S>
where
    S: Service<Request<ReqB>, Response = Response<RspB>>,
    RspB: Default,
{
    type Response = Response<RspB>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<RspB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self.policy.check(req.extensions().get::<PeerIdentity>()) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    method = %req.method(),
                    path = req.uri().path(),
                    "request denied by authorization policy"
                );
                let mut rsp = Response::new(RspB::default());
                *rsp.status_mut() = StatusCode::FORBIDDEN;
                Either::Right(ready(Ok(rsp)))
            }
        }
    }
}

// === impl AuthorizeLayer ===

impl AuthorizeLayer {
    /// A layer applying `policy` (validated).
    pub fn new(policy: AuthzPolicy) -> Result<Self, TlsError> {
        policy.validate()?;
        Ok(AuthorizeLayer {
            policy: Arc::new(policy),
        })
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            policy: self.policy.clone(),
        }
    }
}

impl fmt::Display for AuthzPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allow {} identities, {} trust domains, {} prefixes, unauthenticated: {}",
            self.identities.len(),
            self.trust_domains.len(),
            self.path_prefixes.len(),
            self.allow_unauthenticated
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        Identity::parse(s).expect("valid identity")
    }

    fn peer(s: &str) -> PeerIdentity {
        PeerIdentity(Some(id(s)))
    }

    #[test]
    fn default_policy_denies_everyone() {
        let policy = AuthzPolicy::default();
        assert_eq!(
            policy.check(Some(&peer("spiffe://td/a"))),
            Err(Denial::NotAllowed(id("spiffe://td/a")))
        );
        assert_eq!(
            policy.check(Some(&PeerIdentity(None))),
            Err(Denial::Unauthenticated)
        );
        assert_eq!(policy.check(None), Err(Denial::NoPeerIdentity));
    }

    #[test]
    fn rules_allow_by_exact_trust_domain_and_prefix() {
        let policy = AuthzPolicy::default()
            .allow_identity(id("spiffe://a.org/ns/web/sa/fe"))
            .allow_trust_domain("b.org")
            .expect("valid trust domain")
            .allow_path_prefix(id("spiffe://a.org/ns/ops"));
        assert!(policy
            .check(Some(&peer("spiffe://a.org/ns/web/sa/fe")))
            .is_ok());
        assert!(policy
            .check(Some(&peer("spiffe://a.org/ns/web/sa/other")))
            .is_err());
        assert!(policy
            .check(Some(&peer("spiffe://b.org/anything/at/all")))
            .is_ok());
        assert!(policy.check(Some(&peer("spiffe://b.org"))).is_ok());
        assert!(policy.check(Some(&peer("spiffe://a.org/ns/ops"))).is_ok());
        assert!(policy
            .check(Some(&peer("spiffe://a.org/ns/ops/sa/x")))
            .is_ok());
        assert!(policy.check(Some(&peer("spiffe://a.org/ns/opsx"))).is_err());
        assert!(policy
            .check(Some(&peer("spiffe://c.org/ns/ops/sa/x")))
            .is_err());
        assert_eq!(
            policy.check(Some(&PeerIdentity(None))),
            Err(Denial::Unauthenticated)
        );
        assert!(policy
            .allow_unauthenticated(true)
            .check(Some(&PeerIdentity(None)))
            .is_ok());
    }

    #[test]
    fn invalid_trust_domains_are_rejected_with_position() {
        let err = AuthzPolicy::default()
            .allow_trust_domain("Bad.org")
            .expect_err("uppercase");
        assert_eq!(
            err.to_string(),
            "invalid trust domain \"Bad.org\" at byte 0: trust domain must be lowercase"
        );
        let policy = AuthzPolicy {
            trust_domains: vec!["ok.org".into(), "no port:1".into()],
            ..AuthzPolicy::default()
        };
        assert!(matches!(
            policy.validate(),
            Err(TlsError::InvalidTrustDomain { offset: 2, .. })
        ));
    }
}
