//! The meshwork client: a discovery source and hyper-util's pooled client, turned into one
//! `tower::Service<http::Request<B>>` that balances each request over the service's endpoints.
//!
//! # Shape
//!
//! For every endpoint that discovery reports, the client builds **one hyper-util client of its own**
//! (its own connection pool, dialing only that endpoint's address through an
//! [`EndpointConnector`](crate::connect::EndpointConnector)), and hands it to the
//! [`mesh_balance::Balance`] with the endpoint's weight and a [`Health`] handle. The balancer picks an
//! endpoint per request by power of two choices over peak-EWMA cost (DESIGN.md, "Balancing"). The
//! request keeps its logical `Host` / `:authority`: only the TCP connection goes to the endpoint.
//! Per-endpoint clients are kept across discovery updates of the same address, so a weight change
//! does not drop the endpoint's warm connections.
//!
//! A response with a 5xx status, or a request that failed in the transport, is charged to its
//! endpoint as a failure, so an endpoint that fails fast does not look fast to the balancer.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use meshwork::discovery::{Discovery, Endpoint};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let discovery = Discovery::fixed([
//!     Endpoint::new("127.0.0.1:8081".parse()?),
//!     Endpoint::new("127.0.0.1:8082".parse()?),
//! ])?;
//! let client = meshwork::client(discovery).authority("world.svc").build::<Empty<Bytes>>()?;
//! let rsp = client.request(http::Request::get("/hello").body(Empty::new())?).await?;
//! println!("{}", rsp.status());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use http::uri::{Authority, Scheme};
use hyper::body::Incoming;
use hyper_util::client::legacy;
use hyper_util::rt::TokioExecutor;
use mesh_balance::{Balance, BoxError, Health};
use mesh_discovery::Discovery;
use tower::discover::Change;
use tower::Service;

use crate::connect::{EndpointConnector, DEFAULT_CONNECT_TIMEOUT};

/// The per-endpoint service: a hyper-util client whose pool dials one endpoint.
pub type EndpointClient<B> = legacy::Client<EndpointConnector, B>;

type Balancer<B> = Balance<SocketAddr, EndpointClient<B>, ClassifyHttp>;

/// Starts building a client over the endpoints `discovery` reports.
///
/// See [`ClientBuilder`] for the settings and [the module docs](crate::client) for the shape.
pub fn client(discovery: Discovery) -> ClientBuilder {
    ClientBuilder::new(discovery)
}

/// Builds a [`Client`]. Every setting has a production default.
pub struct ClientBuilder {
    discovery: Discovery,
    balance: mesh_balance::Config,
    hyper: legacy::Builder,
    connect_timeout: Duration,
    authority: Option<Authority>,
}

/// A balanced hyper client over one logical service's endpoints.
///
/// Cheap to clone; clones share the endpoint set, its balancing state and the connection pools.
pub struct Client<B> {
    balance: Balancer<B>,
    authority: Option<Authority>,
    discovery: Discovery,
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The balancer rejected its configuration, or no tokio runtime was running.
    #[error("cannot build the balancer: {0}")]
    Balance(#[from] mesh_balance::BuildError),
}

/// Why a request through a [`Client`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request had no authority in its URI nor a `Host` header, and the client has no
    /// [`ClientBuilder::authority`] to fall back on.
    #[error("request has no authority: set the URI's authority, a Host header, or ClientBuilder::authority")]
    MissingAuthority,
    /// The request's URI could not be made absolute.
    #[error("invalid request URI: {0}")]
    InvalidUri(#[from] http::Error),
    /// The balancer had no endpoint to send the request to.
    #[error(transparent)]
    Balance(mesh_balance::Error),
    /// The endpoint's connection failed, or the endpoint closed it mid-request.
    #[error("request to endpoint failed: {0}")]
    Http(#[source] legacy::Error),
    /// Any other failure.
    #[error(transparent)]
    Other(BoxError),
}

/// Charges 5xx responses and transport errors to the endpoint as failures.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassifyHttp;

// === impl ClassifyHttp ===

impl<E> mesh_balance::Classify<http::Response<Incoming>, E> for ClassifyHttp {
    #[inline]
    fn is_failure(&self, result: &Result<http::Response<Incoming>, E>) -> bool {
        match result {
            Ok(rsp) => rsp.status().is_server_error(),
            Err(_) => true,
        }
    }
}

// === impl ClientBuilder ===

impl ClientBuilder {
    /// A builder with production defaults over the endpoints `discovery` reports.
    pub fn new(discovery: Discovery) -> Self {
        let mut hyper = legacy::Client::builder(TokioExecutor::new());
        hyper.pool_idle_timeout(Duration::from_secs(90));
        Self {
            discovery,
            balance: mesh_balance::Config::default(),
            hyper,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            authority: None,
        }
    }

    /// The balancer's settings (defaults: DESIGN.md, "Balancing").
    pub fn balance(mut self, config: mesh_balance::Config) -> Self {
        self.balance = config;
        self
    }

    /// The hyper-util client settings each endpoint's pool is built with (HTTP/2, pool sizes, idle
    /// timeouts). Default: hyper-util's defaults with a 90 s idle timeout.
    pub fn hyper(mut self, builder: legacy::Builder) -> Self {
        self.hyper = builder;
        self
    }

    /// The TCP connect timeout to each endpoint (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The logical authority (`host[:port]`) given to requests that carry neither an absolute URI
    /// nor a `Host` header.
    pub fn authority(mut self, authority: impl TryInto<Authority>) -> Self {
        self.authority = authority.try_into().ok();
        self
    }

    /// Builds the client and spawns its discovery task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError::Balance`] if the balancer's configuration is invalid or no runtime is running.
    pub fn build<B>(self) -> Result<Client<B>, BuildError>
    where
        B: http_body::Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let Self {
            discovery,
            balance,
            hyper,
            connect_timeout,
            authority,
        } = self;

        // One pool per endpoint address, kept while the address stays in the set.
        let mut endpoints: HashMap<SocketAddr, (EndpointClient<B>, Health)> = HashMap::new();
        let changes = discovery.changes().map(move |change| {
            change.map(|change| match change {
                Change::Insert(addr, endpoint) => {
                    let (service, health) = endpoints
                        .entry(addr)
                        .or_insert_with(|| {
                            let connector =
                                EndpointConnector::new(addr).with_connect_timeout(connect_timeout);
                            (hyper.build(connector), Health::new())
                        })
                        .clone();
                    let weight = balance_weight(endpoint.weight);
                    Change::Insert(
                        addr,
                        mesh_balance::Endpoint::new(service)
                            .weight(weight)
                            .health(health),
                    )
                }
                Change::Remove(addr) => {
                    endpoints.remove(&addr);
                    Change::Remove(addr)
                }
            })
        });
        let balance = Balance::builder(balance)
            .classify(ClassifyHttp)
            .spawn(changes)?;
        Ok(Client {
            balance,
            authority,
            discovery,
        })
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("discovery", &self.discovery)
            .field("balance", &self.balance)
            .field("connect_timeout", &self.connect_timeout)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// Discovery weights are relative reals (1.0 default); the balancer's are integers. Scale by 100 so
/// two decimal places survive, and keep any positive weight positive.
fn balance_weight(weight: f64) -> u32 {
    if weight.is_nan() || weight <= 0.0 {
        return 0;
    }
    let scaled = (weight * 100.0).round();
    if scaled >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range and non-negative: the cast is exact after rounding.
        (scaled as u32).max(1)
    }
}

// === impl Client ===

impl<B> Client<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends `req` to one of the service's endpoints.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn request(&self, req: http::Request<B>) -> Result<http::Response<Incoming>, Error> {
        self.clone().call(req).await
    }
}

impl<B> Client<B> {
    /// The discovery handle the client balances over (current endpoint set, errors, counters).
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// The balancer's per-endpoint view (latency estimate, pending requests, health).
    pub fn endpoints(&self) -> Vec<mesh_balance::EndpointStats<SocketAddr>> {
        self.balance.endpoints()
    }

    /// Gives `req` an absolute URI (the legacy pool needs one) without changing its logical
    /// authority: the URI's own, else the `Host` header's, else the configured one.
    fn absolutize(&self, req: &mut http::Request<B>) -> Result<(), Error> {
        if req.uri().authority().is_some() && req.uri().scheme().is_some() {
            return Ok(());
        }
        let authority = match req.uri().authority() {
            Some(authority) => authority.clone(),
            None => match req
                .headers()
                .get(http::header::HOST)
                .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            {
                Some(authority) => authority,
                None => self.authority.clone().ok_or(Error::MissingAuthority)?,
            },
        };
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme.get_or_insert(Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(http::Error::from)?;
        Ok(())
    }
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Self {
            balance: self.balance.clone(),
            authority: self.authority.clone(),
            discovery: self.discovery.clone(),
        }
    }
}

impl<B> fmt::Debug for Client<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("balance", &self.balance)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl<B> Service<http::Request<B>> for Client<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Incoming>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.balance.poll_ready(cx).map_err(Error::from_boxed)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Err(error) = self.absolutize(&mut req) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let fut = self.balance.call(req);
        Box::pin(async move { fut.await.map_err(Error::from_boxed) })
    }
}

// === impl Error ===

impl Error {
    fn from_boxed(error: BoxError) -> Self {
        let error = match error.downcast::<mesh_balance::Error>() {
            Ok(error) => return Error::Balance(*error),
            Err(error) => error,
        };
        match error.downcast::<legacy::Error>() {
            Ok(error) => Error::Http(*error),
            Err(error) => Error::Other(error),
        }
    }

    /// Whether the mesh itself failed the request (no endpoint to send it to), as opposed to the
    /// endpoint or the network.
    pub fn is_no_endpoints(&self) -> bool {
        matches!(self, Error::Balance(_))
    }
}

#[cfg(test)]
mod tests {
    use super::balance_weight;

    #[test]
    fn weights_scale_and_keep_positive_weights_positive() {
        assert_eq!(balance_weight(1.0), 100);
        assert_eq!(balance_weight(2.5), 250);
        assert_eq!(balance_weight(0.0), 0);
        assert_eq!(balance_weight(-1.0), 0);
        assert_eq!(balance_weight(f64::NAN), 0);
        assert_eq!(balance_weight(0.001), 1);
        assert_eq!(balance_weight(1e12), u32::MAX);
    }
}
