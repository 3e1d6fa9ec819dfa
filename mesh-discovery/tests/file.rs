//! The file source on real files (tempfile), reloaded by polling.
#![allow(clippy::unwrap_used)]

mod support;

use std::{path::Path, time::Duration};

use mesh_discovery::{Discovery, DiscoveryError, FileConfig};
use support::{init_tracing, ports, wait_until};

fn watch(path: &Path) -> Discovery {
    Discovery::file(FileConfig {
        poll_interval: Duration::from_millis(50),
        ..FileConfig::new(path)
    })
    .unwrap()
}

/// Replaces the file the way editors and ConfigMaps do: write aside, then rename over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn reloads_when_the_file_changes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, "- addr: 127.0.0.1:8080\n  labels: {version: v1}\n").unwrap();
    let discovery = watch(&path);
    wait_until(&discovery, "the first load", |d| ports(d) == [8080]).await;
    assert_eq!(
        discovery.current().iter().next().unwrap().label("version"),
        Some("v1")
    );

    replace(
        &path,
        "- addr: 127.0.0.1:8080\n  labels: {version: v1}\n- addr: 127.0.0.1:8081\n  weight: 0\n",
    );
    wait_until(&discovery, "the second endpoint", |d| {
        ports(d) == [8080, 8081]
    })
    .await;
    assert!(discovery.current().iter().nth(1).unwrap().is_drained());

    // An in-place edit that keeps the length (and possibly the mtime) is still seen: the content
    // hash changes.
    std::fs::write(
        &path,
        "- addr: 127.0.0.1:8080\n  labels: {version: v2}\n- addr: 127.0.0.1:8081\n  weight: 0\n",
    )
    .unwrap();
    wait_until(&discovery, "the label edit", |d| {
        d.current().iter().next().unwrap().label("version") == Some("v2")
    })
    .await;
    // A poll may have caught the file between truncate and write (an error, not an empty set).
    assert!(discovery.stats().updates >= 3);
    assert!(discovery.last_error().is_none());
    assert_eq!(ports(&discovery), [8080, 8081]);
}

#[tokio::test]
async fn a_malformed_edit_keeps_the_set_and_names_file_and_line() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.toml");
    std::fs::write(&path, "[[endpoints]]\naddr = \"127.0.0.1:1\"\n").unwrap();
    let discovery = watch(&path);
    wait_until(&discovery, "the first load", |d| ports(d) == [1]).await;

    replace(&path, "[[endpoints]]\naddr = \"127.0.0.1:1\"\n\n[[endpoints]]\naddr = \"127.0.0.1:2\"\nweight = -1\n");
    wait_until(&discovery, "the parse error", |d| d.last_error().is_some()).await;
    assert_eq!(ports(&discovery), [1], "the last good set is kept");
    match discovery.last_error().unwrap() {
        DiscoveryError::Parse {
            path: p,
            line,
            format,
            ..
        } => {
            assert_eq!(p, path);
            assert_eq!(line, 6);
            assert_eq!(format, "TOML");
        }
        other => panic!("expected a parse error, got {other}"),
    }
    let msg = discovery.last_error().unwrap().to_string();
    assert!(msg.contains("web.toml:6:"), "{msg}");

    // A broken file is reported once, not at every poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(discovery.stats().errors, 1);

    // The fix is picked up and clears the error.
    replace(&path, "[[endpoints]]\naddr = \"127.0.0.1:2\"\n");
    wait_until(&discovery, "the fix", |d| ports(d) == [2]).await;
    assert!(discovery.last_error().is_none());
}

#[tokio::test]
async fn a_missing_file_is_an_error_and_keeps_the_set() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.json");
    std::fs::write(&path, r#"[{"addr": "127.0.0.1:7"}]"#).unwrap();
    let discovery = watch(&path);
    wait_until(&discovery, "the first load", |d| ports(d) == [7]).await;

    std::fs::remove_file(&path).unwrap();
    wait_until(&discovery, "the io error", |d| {
        matches!(d.last_error(), Some(DiscoveryError::Io { .. }))
    })
    .await;
    assert_eq!(ports(&discovery), [7]);
    assert!(discovery
        .last_error()
        .unwrap()
        .to_string()
        .contains("web.json"));

    std::fs::write(&path, r#"{"endpoints": [{"addr": "127.0.0.1:8"}]}"#).unwrap();
    wait_until(&discovery, "the file to come back", |d| ports(d) == [8]).await;
}

#[tokio::test]
async fn a_file_missing_from_the_start_is_reported() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let discovery = watch(&dir.path().join("absent.yaml"));
    wait_until(&discovery, "the io error", |d| d.stats().errors == 1).await;
    assert!(discovery.current().is_empty());
}

#[test]
fn an_unknown_extension_is_rejected() {
    let err = Discovery::file(FileConfig::new("/tmp/endpoints.txt")).unwrap_err();
    assert!(err.to_string().contains("endpoints.txt"), "{err}");
}

#[tokio::test]
async fn a_yaml_file_of_only_comments_keeps_the_set() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, "- addr: 127.0.0.1:8080\n").unwrap();
    let discovery = watch(&path);
    wait_until(&discovery, "the first load", |d| ports(d) == [8080]).await;

    replace(
        &path,
        "# endpoints are being regenerated\n# - addr: 127.0.0.1:9\n",
    );
    wait_until(&discovery, "the comments-only file reported", |d| {
        d.last_error().is_some()
    })
    .await;
    assert!(matches!(
        discovery.last_error(),
        Some(DiscoveryError::Parse { .. })
    ));
    assert_eq!(
        ports(&discovery),
        [8080],
        "a comments-only file emptied the set"
    );

    // An explicit empty list still empties it.
    replace(&path, "# none for now\n[]\n");
    wait_until(&discovery, "the explicit empty list", |d| {
        d.current().is_empty()
    })
    .await;
    assert!(discovery.last_error().is_none());
}

/// A new handle already holds the file's set when `Discovery::file` returns: a client built on it
/// (as a configuration reload builds one while requests arrive) never sees an empty set the file
/// does not list. Checked without yielding to the runtime, so the watcher task has not run.
#[tokio::test(flavor = "current_thread")]
async fn a_new_handle_holds_the_files_set_before_the_watcher_runs() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, "- addr: 127.0.0.1:8080\n- addr: 127.0.0.1:8081\n").unwrap();
    let discovery = watch(&path);
    assert_eq!(ports(&discovery), [8080, 8081]);
    assert!(discovery.state().is_healthy());
    assert_eq!(discovery.stats().updates, 1);

    // The watcher does not publish the unchanged file a second time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(discovery.stats().updates, 1);

    // A file missing from the start is an error at once too, with no set.
    let missing = watch(&dir.path().join("missing.yaml"));
    assert!(missing.current().is_empty());
    assert!(matches!(
        missing.last_error(),
        Some(DiscoveryError::Io { .. })
    ));
}
