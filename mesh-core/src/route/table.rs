//! Route tables: match requests in declaration order, lead each to a backend or a weighted split.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{Method, Request};
use regex::Regex;

use super::cache::NameCache;
use super::policy::{PolicyExtensions, RoutePolicy};
use super::split::WeightedSplit;
use super::RouteError;
use crate::dtab::Path;

/// How a route matches the request's host (from the URI authority, else the `Host` header; the
/// port is ignored, comparison is case-insensitive).
#[derive(Clone, Debug)]
pub enum HostMatch {
    /// Exactly this host.
    Exact(Box<str>),
    /// This host or any subdomain of it (`example.com` matches `a.example.com`), like a
    /// `*.example.com` virtual host.
    Suffix(Box<str>),
    /// A regular expression that must match the whole host.
    Regex(Regex),
}

/// How a route matches the request path (Envoy's `path` / `prefix` / `safe_regex`).
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(Box<str>),
    /// Paths starting with this string (plain string prefix, as Envoy and Istio).
    Prefix(Box<str>),
    /// A regular expression that must match the whole path.
    Regex(Regex),
}

/// How a route matches one request header. With several values, any value may match.
#[derive(Clone, Debug)]
pub enum HeaderMatch {
    /// The header has exactly this value.
    Exact(HeaderName, HeaderValue),
    /// The header has a value (as text) matched in full by this regular expression.
    Regex(HeaderName, Regex),
    /// The header is present.
    Present(HeaderName),
}

/// Where a route sends requests: a logical name that the dtab resolves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// This logical name, e.g. `/svc/world`.
    Name(Path),
    /// The request's host under this prefix: `/svc` sends `Host: world` to `/svc/world`, as
    /// Linkerd 1's default identifier does.
    Host(Path),
}

/// The parts of a route that the layers after the router need: its name and policy.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    /// The route's name (unique in its table).
    pub name: Arc<str>,
    /// The route's policy.
    pub policy: RoutePolicy,
    /// The request extensions the policy stands for, made once for the route.
    extensions: PolicyExtensions,
}

impl RouteInfo {
    /// The request extensions of the route's policy (the router inserts them).
    pub fn extensions(&self) -> &PolicyExtensions {
        &self.extensions
    }
}

impl PartialEq for RouteInfo {
    fn eq(&self, other: &Self) -> bool {
        // The extensions are made from the policy.
        self.name == other.name && self.policy == other.policy
    }
}

/// A validated route: matchers, backends with weights, and policy. Build with [`Route::builder`].
#[derive(Clone, Debug)]
pub struct Route {
    info: Arc<RouteInfo>,
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    method: Option<Method>,
    headers: Vec<HeaderMatch>,
    backends: Vec<(Backend, u32)>,
}

/// Builds a [`Route`]; [`RouteBuilder::build`] compiles regexes and checks the parts.
#[derive(Clone, Debug)]
pub struct RouteBuilder {
    name: String,
    host: Option<(u8, String)>,
    path: Option<(u8, String)>,
    method: Option<Method>,
    headers: Vec<(u8, String, String)>,
    backends: Vec<(Backend, u32)>,
    policy: RoutePolicy,
}

/// An ordered list of routes. The first route whose matchers all match wins.
#[derive(Debug)]
pub struct RouteTable {
    entries: Box<[RouteEntry]>,
    /// Indices of routes with an exact host matcher, by lowercase host, in declaration order.
    by_host: HashMap<Box<str>, Box<[u32]>>,
    /// Indices of the other routes, in declaration order.
    any_host: Box<[u32]>,
}

/// A route in a table, with its split state and resolution cache.
#[derive(Debug)]
pub struct RouteEntry {
    route: Route,
    split: WeightedSplit<BackendSlot>,
}

#[derive(Debug)]
pub(crate) struct BackendSlot {
    pub(crate) backend: Backend,
    pub(crate) cache: NameCache,
}

// === impl Route ===

impl Route {
    /// Starts a route with this name.
    pub fn builder(name: impl Into<String>) -> RouteBuilder {
        RouteBuilder {
            name: name.into(),
            host: None,
            path: None,
            method: None,
            headers: Vec::new(),
            backends: Vec::new(),
            policy: RoutePolicy::default(),
        }
    }

    /// Name and policy.
    pub fn info(&self) -> &Arc<RouteInfo> {
        &self.info
    }

    /// The backends and their weights.
    pub fn backends(&self) -> &[(Backend, u32)] {
        &self.backends
    }

    /// Whether every matcher of this route matches the request.
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        self.matches_with_host(req, request_host(req))
    }

    /// As [`Route::matches`], with the request's host already extracted.
    fn matches_with_host<B>(&self, req: &Request<B>, host: Option<&str>) -> bool {
        if let Some(hm) = &self.host {
            let Some(host) = host else {
                return false;
            };
            let ok = match hm {
                HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
                HostMatch::Suffix(s) => {
                    host.eq_ignore_ascii_case(s)
                        || (host.len() > s.len() + 1
                            && host.as_bytes()[host.len() - s.len() - 1] == b'.'
                            && host[host.len() - s.len()..].eq_ignore_ascii_case(s))
                }
                HostMatch::Regex(r) => r.is_match(host),
            };
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if req.method() != m {
                return false;
            }
        }
        if let Some(pm) = &self.path {
            let path = req.uri().path();
            let ok = match pm {
                PathMatch::Exact(p) => path == &**p,
                PathMatch::Prefix(p) => path.starts_with(&**p),
                PathMatch::Regex(r) => r.is_match(path),
            };
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|h| match h {
            HeaderMatch::Present(n) => req.headers().contains_key(n),
            HeaderMatch::Exact(n, v) => req.headers().get_all(n).iter().any(|x| x == v),
            HeaderMatch::Regex(n, r) => req
                .headers()
                .get_all(n)
                .iter()
                .any(|x| x.to_str().is_ok_and(|s| r.is_match(s))),
        })
    }
}

// === impl RouteBuilder ===

const EXACT: u8 = 0;
const PREFIX: u8 = 1;
const REGEX: u8 = 2;
const PRESENT: u8 = 3;

impl RouteBuilder {
    /// Match this host exactly (case-insensitive, port ignored).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some((EXACT, host.into()));
        self
    }

    /// Match this host or any subdomain of it.
    pub fn host_suffix(mut self, domain: impl Into<String>) -> Self {
        self.host = Some((PREFIX, domain.into()));
        self
    }

    /// Match hosts that this regular expression matches in full.
    pub fn host_regex(mut self, re: impl Into<String>) -> Self {
        self.host = Some((REGEX, re.into()));
        self
    }

    /// Match exactly this path.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some((EXACT, path.into()));
        self
    }

    /// Match paths starting with this string.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path = Some((PREFIX, prefix.into()));
        self
    }

    /// Match paths that this regular expression matches in full.
    pub fn path_regex(mut self, re: impl Into<String>) -> Self {
        self.path = Some((REGEX, re.into()));
        self
    }

    /// Match this method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Require a header with exactly this value.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((EXACT, name.into(), value.into()));
        self
    }

    /// Require a header whose value this regular expression matches in full.
    pub fn header_regex(mut self, name: impl Into<String>, re: impl Into<String>) -> Self {
        self.headers.push((REGEX, name.into(), re.into()));
        self
    }

    /// Require a header to be present.
    pub fn header_present(mut self, name: impl Into<String>) -> Self {
        self.headers.push((PRESENT, name.into(), String::new()));
        self
    }

    /// Send to this backend (weight 1; call again for a split).
    pub fn to(self, backend: Backend) -> Self {
        self.weighted(backend, 1)
    }

    /// Add a backend with a weight; requests split in proportion to weights. Weight 0 drains it.
    pub fn weighted(mut self, backend: Backend, weight: u32) -> Self {
        self.backends.push((backend, weight));
        self
    }

    /// The route's policy for the resilience layers.
    pub fn policy(mut self, policy: RoutePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Validates and compiles the route.
    pub fn build(self) -> Result<Route, RouteError> {
        let name = self.name;
        let regex = |field: &str, pattern: &str| {
            Regex::new(&format!("^(?:{pattern})$")).map_err(|source| RouteError::InvalidRegex {
                route: name.clone(),
                field: field.to_owned(),
                pattern: pattern.to_owned(),
                source,
            })
        };
        let host = match self.host {
            None => None,
            Some((EXACT, h)) => Some(HostMatch::Exact(h.to_ascii_lowercase().into())),
            Some((PREFIX, h)) => Some(HostMatch::Suffix(
                h.trim_start_matches("*.").to_ascii_lowercase().into(),
            )),
            Some((_, re)) => Some(HostMatch::Regex(regex("host", &format!("(?i:{re})"))?)),
        };
        let path = match self.path {
            None => None,
            Some((EXACT, p)) => Some(PathMatch::Exact(p.into())),
            Some((PREFIX, p)) => Some(PathMatch::Prefix(p.into())),
            Some((_, re)) => Some(PathMatch::Regex(regex("path", &re)?)),
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (kind, hname, value) in self.headers {
            let n = HeaderName::try_from(hname.as_str()).map_err(|_| {
                RouteError::InvalidHeaderName {
                    route: name.clone(),
                    name: hname.clone(),
                }
            })?;
            headers.push(match kind {
                EXACT => HeaderMatch::Exact(
                    n,
                    HeaderValue::try_from(value).map_err(|_| RouteError::InvalidHeaderValue {
                        route: name.clone(),
                        name: hname.clone(),
                    })?,
                ),
                PRESENT => HeaderMatch::Present(n),
                _ => HeaderMatch::Regex(n, regex(&format!("header {hname}"), &value)?),
            });
        }
        if self.backends.iter().all(|(_, w)| *w == 0) {
            return Err(RouteError::NoBackends { route: name });
        }
        let extensions = PolicyExtensions::new(&self.policy)?;
        Ok(Route {
            info: Arc::new(RouteInfo {
                name: name.into(),
                policy: self.policy,
                extensions,
            }),
            host,
            path,
            method: self.method,
            headers,
            backends: self.backends,
        })
    }
}

// === impl RouteTable ===

impl RouteTable {
    /// A table of these routes, in order; splits use seed 0.
    pub fn new(routes: Vec<Route>) -> Result<Self, RouteError> {
        Self::seeded(routes, 0)
    }

    /// A table whose weighted splits start from `seed` (route `i` uses `seed + i`), so runs are
    /// reproducible.
    pub fn seeded(routes: Vec<Route>, seed: u64) -> Result<Self, RouteError> {
        let mut names = HashSet::new();
        let mut entries = Vec::with_capacity(routes.len());
        for (i, route) in routes.into_iter().enumerate() {
            if !names.insert(route.info.name.clone()) {
                return Err(RouteError::DuplicateRoute {
                    name: route.info.name.to_string(),
                });
            }
            let slots = route
                .backends
                .iter()
                .map(|(b, w)| {
                    (
                        BackendSlot {
                            backend: b.clone(),
                            cache: NameCache::default(),
                        },
                        *w,
                    )
                })
                .collect();
            let split =
                WeightedSplit::new(slots, seed.wrapping_add(i as u64)).ok_or_else(|| {
                    RouteError::NoBackends {
                        route: route.info.name.to_string(),
                    }
                })?;
            entries.push(RouteEntry { route, split });
        }
        let mut by_host: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut any_host = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let i = u32::try_from(i).map_err(|_| RouteError::InvalidConfig {
                what: "more than 2^32 routes".into(),
            })?;
            match &e.route.host {
                Some(HostMatch::Exact(h)) => by_host.entry(h.clone()).or_default().push(i),
                _ => any_host.push(i),
            }
        }
        Ok(Self {
            entries: entries.into(),
            by_host: by_host
                .into_iter()
                .map(|(h, v)| (h, v.into_boxed_slice()))
                .collect(),
            any_host: any_host.into(),
        })
    }

    /// The routes in order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.entries.iter().map(|e| &e.route)
    }

    /// The first route that matches the request, in declaration order.
    ///
    /// Routes with an exact host are indexed by host, so selection looks only at the routes for
    /// the request's host and the routes without an exact host, merged in declaration order.
    pub fn select<B>(&self, req: &Request<B>) -> Option<&RouteEntry> {
        let host = request_host(req);
        let exact: &[u32] = match host {
            Some(h) if !self.by_host.is_empty() => {
                let key = host_key(h);
                self.by_host.get(&*key).map_or(&[], |v| &v[..])
            }
            _ => &[],
        };
        let (mut a, mut b) = (exact.iter().peekable(), self.any_host.iter().peekable());
        loop {
            let i = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            let e = &self.entries[*i? as usize];
            if e.route.matches_with_host(req, host) {
                return Some(e);
            }
        }
    }
}

// === impl RouteEntry ===

impl RouteEntry {
    /// The route.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Picks the backend for the next request (weighted split).
    pub fn pick_backend(&self) -> &Backend {
        &self.split.pick().backend
    }

    pub(crate) fn pick_slot(&self) -> &BackendSlot {
        self.split.pick()
    }
}

/// The request's host without port: the URI authority, else the `Host` header.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    let raw = raw.rsplit_once('@').map_or(raw, |(_, h)| h);
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        raw.split_once(':').map_or(raw, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

/// The logical name for `backend` given the request host (lowercased only if needed).
pub(crate) fn host_key(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Name(p) => write!(f, "{p}"),
            Backend::Host(p) => write!(f, "{p}/<host>"),
        }
    }
}
