#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn edges_count_requests_and_successes() {
    let graph = ServiceGraph::new();
    let edge = graph.edge("web", "books");
    for i in 0..10 {
        edge.record(i % 5 != 0);
    }
    let snap = graph.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].requests, 10);
    assert_eq!(snap[0].successes, 8);
    assert_eq!(snap[0].failures, 2);
    assert_eq!(snap[0].success_rate, Some(0.8));
    // The same edge is shared, not duplicated.
    graph.edge("web", "books").record(true);
    assert_eq!(graph.snapshot()[0].requests, 11);
}

#[test]
fn inbound_edges_are_keyed_by_caller() {
    let graph = ServiceGraph::new();
    let dst = graph.destination("books");
    dst.source(Some("spiffe://mesh/ns/a/sa/web")).record(true);
    dst.source(Some("spiffe://mesh/ns/a/sa/web")).record(false);
    dst.source(None).record(true);
    let snap = graph.snapshot();
    assert_eq!(snap.len(), 2);
    assert_eq!(snap[0].source, "spiffe://mesh/ns/a/sa/web");
    assert_eq!(snap[0].requests, 2);
    assert_eq!(snap[1].source, UNKNOWN_SOURCE);
}

#[test]
fn edge_cap_folds_new_callers_into_other() {
    let graph = ServiceGraph::with_max_edges(2);
    graph.edge("a", "svc").record(true);
    graph.edge("b", "svc").record(true);
    graph.edge("c", "svc").record(false);
    graph.edge("d", "svc").record(true);
    let snap = graph.snapshot();
    let other = snap.iter().find(|e| e.source == OTHER_SOURCE).unwrap();
    assert_eq!(other.requests, 2);
    assert_eq!(snap.iter().map(|e| e.requests).sum::<u64>(), 4);
}

#[test]
fn json_and_dot_render_every_edge() {
    let graph = ServiceGraph::new();
    graph.edge("web", "books").record(true);
    graph.edge("we\"b", "authors").record(false);
    let json = graph.to_json();
    let edges = json["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    assert_eq!(edges[1]["destination"], "books");
    assert_eq!(edges[1]["success_rate"], 1.0);
    let dot = graph.to_dot();
    assert!(dot.starts_with("digraph meshwork {"));
    assert!(dot.contains("\"web\" -> \"books\" [label=\"1 req, 100.00%\"];"));
    assert!(dot.contains("\"we\\\"b\" -> \"authors\" [label=\"1 req, 0.00%\"];"));
}
