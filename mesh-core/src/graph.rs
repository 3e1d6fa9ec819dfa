//! The service graph: which workloads call which services, how often, and how successfully.
//!
//! Every edge is `source → destination` with a request count and a success count, recorded by the
//! golden-metrics layers ([`crate::metrics::HttpMetricsLayer::with_edge`] on a client's route,
//! [`crate::metrics::HttpMetricsLayer::with_inbound_edges`] on a server, where the source is the
//! caller's verified identity). The admin server serves [`ServiceGraph::to_json`] and
//! [`ServiceGraph::to_dot`] (Graphviz), the view Linkerd's `viz edges` and Istio's Kiali give.
//!
//! # Why edges are handles
//! The request path must not look an edge up by name: a client's route knows its edge when the
//! route is built and keeps an [`Arc<EdgeStats>`]; a server keeps a small per-destination cache of
//! the callers it has seen ([`DestinationEdges`]), so each request costs a short scan under a
//! read lock that only this destination shares. The number of edges is capped
//! ([`ServiceGraph::with_max_edges`], default 10 000); callers past the cap are counted under the
//! source `other`, so a flood of spoofed names cannot grow memory without bound.
//!
//! ```
//! use mesh_core::graph::ServiceGraph;
//!
//! let graph = ServiceGraph::new();
//! let edge = graph.edge("web", "books");
//! edge.record(true);
//! edge.record(false);
//! let dot = graph.to_dot();
//! assert!(dot.contains("\"web\" -> \"books\""));
//! assert_eq!(graph.snapshot()[0].success_rate, Some(0.5));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

/// Source name used when a caller cannot be identified.
pub const UNKNOWN_SOURCE: &str = "unknown";
/// Source name used for callers past the edge cap.
pub const OTHER_SOURCE: &str = "other";
/// Default cap on the number of edges.
pub const DEFAULT_MAX_EDGES: usize = 10_000;
/// Per-destination cache size of [`DestinationEdges`].
const DESTINATION_CACHE: usize = 64;

/// The observed service graph. Cloning shares it.
#[derive(Clone)]
pub struct ServiceGraph {
    inner: Arc<GraphInner>,
}

/// `(source, destination)`.
type EdgeKey = (Arc<str>, Arc<str>);

struct GraphInner {
    max_edges: usize,
    edges: RwLock<HashMap<EdgeKey, Arc<EdgeStats>>>,
}

/// Counters of one edge.
#[derive(Debug, Default)]
pub struct EdgeStats {
    requests: AtomicU64,
    successes: AtomicU64,
}

/// The edges into one destination, keyed by caller, cached for the request path.
pub struct DestinationEdges {
    graph: ServiceGraph,
    destination: Arc<str>,
    cache: RwLock<Vec<(Arc<str>, Arc<EdgeStats>)>>,
}

/// One edge as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Edge {
    /// Calling workload (identity or name).
    pub source: String,
    /// Called service.
    pub destination: String,
    /// Requests observed.
    pub requests: u64,
    /// Requests classified as successful.
    pub successes: u64,
    /// Requests classified as failed.
    pub failures: u64,
    /// `successes / requests`, or `None` before the first request.
    pub success_rate: Option<f64>,
}

/// The whole graph as served by the admin API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphSnapshot {
    /// Edges sorted by source, then destination.
    pub edges: Vec<Edge>,
}

// === impl ServiceGraph ===

impl ServiceGraph {
    /// An empty graph with the default edge cap.
    pub fn new() -> Self {
        Self::with_max_edges(DEFAULT_MAX_EDGES)
    }

    /// An empty graph holding at most `max_edges` distinct edges (at least 1).
    pub fn with_max_edges(max_edges: usize) -> Self {
        Self {
            inner: Arc::new(GraphInner {
                max_edges: max_edges.max(1),
                edges: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The counters of edge `source → destination`, created if needed. Call once per target and
    /// keep the handle.
    pub fn edge(&self, source: &str, destination: &str) -> Arc<EdgeStats> {
        let key: EdgeKey = (source.into(), destination.into());
        if let Some(edge) = self.inner.edges.read().get(&key) {
            return edge.clone();
        }
        let mut edges = self.inner.edges.write();
        if edges.len() >= self.inner.max_edges && !edges.contains_key(&key) {
            let other: EdgeKey = (OTHER_SOURCE.into(), key.1);
            // The "other" edge itself may exceed the cap by one per destination: it is what keeps
            // the totals right.
            return edges.entry(other).or_default().clone();
        }
        edges.entry(key).or_default().clone()
    }

    /// The edges into `destination`, for a server that learns its callers per request.
    pub fn destination(&self, destination: &str) -> Arc<DestinationEdges> {
        Arc::new(DestinationEdges {
            graph: self.clone(),
            destination: destination.into(),
            cache: RwLock::new(Vec::new()),
        })
    }

    /// Every edge, sorted by source then destination.
    pub fn snapshot(&self) -> Vec<Edge> {
        let mut edges: Vec<Edge> = self
            .inner
            .edges
            .read()
            .iter()
            .map(|((source, destination), stats)| {
                let requests = stats.requests();
                let successes = stats.successes().min(requests);
                Edge {
                    source: source.to_string(),
                    destination: destination.to_string(),
                    requests,
                    successes,
                    failures: requests - successes,
                    success_rate: (requests > 0).then(|| successes as f64 / requests as f64),
                }
            })
            .collect();
        edges.sort_by(|a, b| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)));
        edges
    }

    /// The graph as JSON: `{"edges":[{"source":..,"destination":..,"requests":..,
    /// "successes":..,"failures":..,"success_rate":..}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(GraphSnapshot {
            edges: self.snapshot(),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// The graph in Graphviz DOT: one node per workload or service, one labelled arrow per edge
    /// (`"web" -> "books" [label="12 req, 91.67%"];`).
    pub fn to_dot(&self) -> String {
        let edges = self.snapshot();
        let mut nodes: Vec<&str> = edges
            .iter()
            .flat_map(|e| [e.source.as_str(), e.destination.as_str()])
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut out = String::from("digraph meshwork {\n  rankdir=LR;\n  node [shape=box];\n");
        for node in nodes {
            let _ = writeln!(out, "  \"{}\";", dot_escape(node));
        }
        for e in &edges {
            let rate = e
                .success_rate
                .map(|r| format!("{:.2}%", r * 100.0))
                .unwrap_or_else(|| "-".to_string());
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{} req, {}\"];",
                dot_escape(&e.source),
                dot_escape(&e.destination),
                e.requests,
                rate
            );
        }
        out.push_str("}\n");
        out
    }
}

impl Default for ServiceGraph {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ServiceGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceGraph")
            .field("edges", &self.inner.edges.read().len())
            .field("max_edges", &self.inner.max_edges)
            .finish()
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

// === impl EdgeStats ===

impl EdgeStats {
    /// Counts one request and whether it succeeded.
    #[inline]
    pub fn record(&self, success: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if success {
            self.successes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests counted.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Successful requests counted.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }
}

// === impl DestinationEdges ===

impl DestinationEdges {
    /// The edge from `source` (or [`UNKNOWN_SOURCE`]) into this destination.
    pub fn source(&self, source: Option<&str>) -> Arc<EdgeStats> {
        let source = source.unwrap_or(UNKNOWN_SOURCE);
        if let Some((_, edge)) = self.cache.read().iter().find(|(s, _)| &**s == source) {
            return edge.clone();
        }
        let edge = self.graph.edge(source, &self.destination);
        let mut cache = self.cache.write();
        if cache.len() < DESTINATION_CACHE && !cache.iter().any(|(s, _)| &**s == source) {
            cache.push((source.into(), edge.clone()));
        }
        edge
    }

    /// The destination's name.
    pub fn destination(&self) -> &str {
        &self.destination
    }
}

impl fmt::Debug for DestinationEdges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DestinationEdges")
            .field("destination", &self.destination)
            .field("cached_sources", &self.cache.read().len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
