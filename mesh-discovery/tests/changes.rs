//! The static sources and the change stream a balancer consumes.
#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use futures_util::StreamExt;
use mesh_discovery::{Discovery, Endpoint, EndpointSet};
use tower::discover::{Change, Discover};

fn ep(port: u16) -> Endpoint {
    Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn describe(change: Change<SocketAddr, Endpoint>) -> String {
    match change {
        Change::Insert(a, e) => format!("+{} w{}", a.port(), e.weight),
        Change::Remove(a) => format!("-{}", a.port()),
    }
}

async fn next(changes: &mut mesh_discovery::Changes) -> String {
    let item = tokio::time::timeout(support::PATIENCE, changes.next())
        .await
        .expect("a change")
        .expect("stream open")
        .unwrap();
    describe(item)
}

#[tokio::test]
async fn fixed_list_inserts_once_then_stays_pending() {
    let discovery = Discovery::fixed([ep(2), ep(1)]).unwrap();
    assert_eq!(discovery.source(), "static");
    assert_eq!(discovery.stats().updates, 1);
    let mut changes = discovery.into_changes();
    assert_eq!(next(&mut changes).await, "+1 w1");
    assert_eq!(next(&mut changes).await, "+2 w1");
    // The handle was consumed, yet the stream neither ends nor yields.
    let more = tokio::time::timeout(Duration::from_millis(200), changes.next()).await;
    assert!(
        more.is_err(),
        "a fixed list must stay pending, got {more:?}"
    );
}

#[test]
fn fixed_list_rejects_duplicates() {
    assert!(Discovery::fixed([ep(1), ep(1)]).is_err());
}

#[tokio::test]
async fn changes_diff_consecutive_snapshots() {
    let (discovery, updater) = Discovery::manual();
    let mut changes = discovery.changes();
    updater.update([ep(1), ep(2)]).unwrap();
    assert_eq!(next(&mut changes).await, "+1 w1");
    assert_eq!(next(&mut changes).await, "+2 w1");

    updater.update([ep(2).with_weight(3.0), ep(3)]).unwrap();
    assert_eq!(next(&mut changes).await, "+2 w3");
    assert_eq!(next(&mut changes).await, "+3 w1");
    assert_eq!(next(&mut changes).await, "-1");

    // Publishing the same set again yields nothing; errors yield nothing either.
    updater.update([ep(2).with_weight(3.0), ep(3)]).unwrap();
    assert!(updater.update([ep(4).with_weight(f64::NAN)]).is_err());
    updater.update([]).unwrap();
    assert_eq!(next(&mut changes).await, "-2");
    assert_eq!(next(&mut changes).await, "-3");

    let stats = discovery.stats();
    assert_eq!((stats.updates, stats.refreshes, stats.errors), (3, 4, 1));
}

#[tokio::test]
async fn a_late_stream_starts_from_the_current_set() {
    let (discovery, updater) = Discovery::manual();
    updater.update([ep(1)]).unwrap();
    updater.update([ep(5)]).unwrap();
    let mut changes = discovery.changes();
    assert_eq!(next(&mut changes).await, "+5 w1");
}

#[tokio::test]
async fn changes_is_a_tower_discover() {
    fn assert_discover<D: Discover<Key = SocketAddr, Service = Endpoint> + Unpin>(_: &D) {}
    let discovery = Discovery::fixed([ep(1)]).unwrap();
    let changes = discovery.changes();
    assert_discover(&changes);
}

#[tokio::test]
async fn changed_wakes_on_updates_and_stopped_source_is_reported() {
    let (mut discovery, updater) = Discovery::manual();
    let waiter = {
        let mut d = discovery.clone();
        tokio::spawn(async move {
            d.changed().await.unwrap();
            d.current().len()
        })
    };
    updater.update([ep(1), ep(2)]).unwrap();
    assert_eq!(waiter.await.unwrap(), 2);
    assert_eq!(
        *discovery.current(),
        EndpointSet::from_endpoints([ep(1), ep(2)]).unwrap()
    );

    drop(updater);
    discovery.changed().await.unwrap(); // the update not yet seen by this handle
    let err = discovery.changed().await.unwrap_err();
    assert!(err.to_string().contains("manual"), "{err}");
}
