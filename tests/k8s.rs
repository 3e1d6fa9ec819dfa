//! The Kubernetes manifests in examples/k8s and the output of `mesh-proxy inject`: every
//! document validates against the Kubernetes schemas (PyPI's `kubernetes-validate --strict`,
//! which scripts/test.sh installs), every proxy configuration a ConfigMap holds passes the
//! proxy's own validation, and the pieces fit together (volumes name existing ConfigMaps, probes
//! hit the configured admin port, the grace period covers the drain, discovery names headless
//! Services and their ports).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use meshwork::config::inject::{inject, InjectOptions};
use meshwork::config::{Config, Source};
use serde::Deserialize;
use serde_yaml_ng::Value;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/k8s")
}

fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read examples/k8s") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&k8s_dir(), &mut out);
    out.sort();
    assert!(out.len() >= 4, "manifests: {out:?}");
    out
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubernetes-validate`: from the virtualenv scripts/test.sh makes, else on PATH, else in
/// ~/.local/bin (`pip install --user`).
fn validator() -> PathBuf {
    let venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/k8s-venv/bin/kubernetes-validate");
    let mut candidates = vec![venv];
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.extend(std::env::split_paths(&path).map(|d| d.join("kubernetes-validate")));
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".local/bin/kubernetes-validate"));
    }
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .expect("kubernetes-validate is needed (PyPI; scripts/test.sh installs it)")
}

/// Validates `files` against the Kubernetes schemas, strictly (unknown fields are errors).
fn validate(files: &[PathBuf]) -> Result<String, String> {
    let out = Command::new(validator())
        .arg("--strict")
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// Every `*.toml` in every ConfigMap, by ConfigMap name, parsed by the proxy's own validation.
fn proxy_configs(docs: &[Value]) -> BTreeMap<String, Config> {
    let mut out = BTreeMap::new();
    for doc in docs.iter().filter(|d| s(d, &["kind"]) == Some("ConfigMap")) {
        let name = s(doc, &["metadata", "name"]).expect("ConfigMap name");
        let Some(data) = doc.get("data").and_then(Value::as_mapping) else {
            continue;
        };
        for (key, text) in data {
            let key = key.as_str().expect("key");
            if !key.ends_with(".toml") {
                continue;
            }
            let text = text.as_str().expect("text");
            let config = Config::parse(&format!("{name}/{key}"), text)
                .unwrap_or_else(|e| panic!("ConfigMap {name}: {e}"));
            out.insert(name.to_owned(), config);
        }
    }
    out
}

/// The pod templates (workload name, pod spec).
fn pods(docs: &[Value]) -> Vec<(&str, &Value)> {
    docs.iter()
        .filter(|d| {
            matches!(
                s(d, &["kind"]),
                Some("Deployment" | "DaemonSet" | "StatefulSet")
            )
        })
        .map(|d| {
            (
                s(d, &["metadata", "name"]).expect("name"),
                &d["spec"]["template"]["spec"],
            )
        })
        .collect()
}

/// Checks that each mesh-proxy container's ConfigMap exists and holds a valid configuration
/// whose admin port the probes use and whose drain fits in the grace period; returns how many
/// proxies were checked.
fn check_proxies(docs: &[Value], configs: &BTreeMap<String, Config>) -> usize {
    let mut checked = 0;
    for (workload, pod) in pods(docs) {
        let Some(proxy) = seq(pod, &["containers"])
            .into_iter()
            .find(|c| s(c, &["name"]) == Some("mesh-proxy"))
        else {
            continue;
        };
        let args: Vec<&str> = seq(proxy, &["args"])
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(args.first(), Some(&"run"), "{workload}: {args:?}");
        let file = Path::new(args[1]);
        let mount = seq(proxy, &["volumeMounts"])
            .into_iter()
            .find(|m| s(m, &["mountPath"]).is_some_and(|p| file.starts_with(p)))
            .unwrap_or_else(|| panic!("{workload}: nothing mounted at {}", file.display()));
        let volume = seq(pod, &["volumes"])
            .into_iter()
            .find(|v| s(v, &["name"]) == s(mount, &["name"]))
            .unwrap_or_else(|| panic!("{workload}: no volume for {mount:?}"));
        let map = s(volume, &["configMap", "name"]).expect("a ConfigMap volume");
        let config = configs
            .get(map)
            .unwrap_or_else(|| panic!("{workload}: ConfigMap {map} is not in the manifests"));
        for probe in ["readinessProbe", "livenessProbe"] {
            let port = proxy[probe]["httpGet"]["port"].as_u64();
            assert_eq!(
                port,
                Some(u64::from(config.admin_listen.port())),
                "{workload}: {probe} is not on the admin port"
            );
        }
        let grace = pod
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30);
        assert!(
            grace > config.drain_timeout.as_secs(),
            "{workload}: grace {grace}s does not cover the drain {:?}",
            config.drain_timeout
        );
        if config.tls.is_some() {
            let secret = seq(pod, &["volumes"])
                .into_iter()
                .find_map(|v| s(v, &["secret", "secretName"]));
            assert!(secret.is_some(), "{workload}: TLS without a Secret volume");
        }
        checked += 1;
    }
    checked
}

/// Each DNS or SRV name of a proxy configuration is a headless Service of the manifests with
/// that port (A: the number, SRV: the port's name).
fn check_discovery(docs: &[Value], configs: &BTreeMap<String, Config>) -> usize {
    let services: Vec<&Value> = docs
        .iter()
        .filter(|d| s(d, &["kind"]) == Some("Service"))
        .collect();
    let find = |host: &str| {
        let mut parts = host.split('.');
        let (name, ns) = (
            parts.next().expect("name"),
            parts.next().expect("namespace"),
        );
        assert_eq!(
            parts.collect::<Vec<_>>(),
            ["svc", "cluster", "local"],
            "{host} is not a cluster DNS name"
        );
        let svc = services
            .iter()
            .find(|d| {
                s(d, &["metadata", "name"]) == Some(name)
                    && s(d, &["metadata", "namespace"]) == Some(ns)
            })
            .unwrap_or_else(|| panic!("no Service {name} in {ns}"));
        assert_eq!(
            s(svc, &["spec", "clusterIP"]),
            Some("None"),
            "{name} is not headless"
        );
        seq(svc, &["spec", "ports"])
    };
    let mut checked = 0;
    for config in configs.values() {
        for service in &config.services {
            match &service.source {
                Source::Dns(target) => {
                    let (host, port) = target.rsplit_once(':').expect("host:port");
                    let port: u64 = port.parse().expect("port");
                    assert!(
                        find(host).iter().any(|p| p["port"].as_u64() == Some(port)),
                        "{target}: the Service has no port {port}"
                    );
                }
                Source::Srv(name) => {
                    let rest = name.strip_prefix('_').expect("_port._tcp.host");
                    let (port, rest) = rest.split_once("._tcp.").expect("_port._tcp.host");
                    assert!(
                        find(rest).iter().any(|p| s(p, &["name"]) == Some(port)),
                        "{name}: the Service has no port named {port}"
                    );
                }
                other => panic!(
                    "{}: discovery on Kubernetes is DNS, not {other:?}",
                    service.name
                ),
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let files = manifests();
    let report = validate(&files).unwrap_or_else(|e| panic!("kubernetes-validate:\n{e}"));
    assert!(
        report.contains("DaemonSet") || report.contains("daemonset/"),
        "{report}"
    );
    // The validator does reject what Kubernetes would: a container with an unknown field.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(k8s_dir().join("daemonset/mesh-proxy.yaml"))
        .expect("read")
        .replace("readinessProbe:", "readinesProbe:");
    std::fs::write(&bad, text).expect("write");
    let err = validate(&[bad]).expect_err("a misspelt field must not validate");
    assert!(err.contains("readinesProbe"), "{err}");
}

#[test]
fn every_embedded_proxy_config_passes_the_proxys_validation_and_fits_its_pod() {
    // Each directory is one way to deploy (they reuse names), so each is checked on its own.
    let mut variants: BTreeMap<PathBuf, Vec<Value>> = BTreeMap::new();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).expect("read");
        let parsed = documents(&text);
        for doc in &parsed {
            for key in ["apiVersion", "kind"] {
                assert!(
                    s(doc, &[key]).is_some(),
                    "{}: a document without {key}",
                    file.display()
                );
            }
            assert!(
                s(doc, &["metadata", "name"]).is_some(),
                "{}",
                file.display()
            );
        }
        let dir = file.parent().expect("dir").to_owned();
        variants.entry(dir).or_default().extend(parsed);
    }
    let (mut configs_seen, mut proxies, mut names) = (0, 0, 0);
    for (dir, docs) in &variants {
        let configs = proxy_configs(docs);
        configs_seen += configs.len();
        proxies += check_proxies(docs, &configs);
        names += check_discovery(docs, &configs);
        eprintln!("{}: {} proxy configs checked", dir.display(), configs.len());
    }
    // The DaemonSet's, hello's and world's sidecars; the DaemonSet and three Deployments with
    // sidecars; three names in the DaemonSet's config and two in hello's.
    assert!(
        configs_seen >= 3 && proxies >= 4 && names >= 5,
        "{configs_seen} {proxies} {names}"
    );

    let docs = &variants[&k8s_dir().join("daemonset")];
    // The DaemonSet model: apps call the proxy on their node's port 4140.
    let (_, ds) = pods(docs)
        .into_iter()
        .find(|(n, _)| *n == "mesh-proxy")
        .expect("the DaemonSet");
    assert!(seq(ds, &["containers"])[0]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .any(|p| p["hostPort"].as_u64() == Some(4140)));
    let hello = docs
        .iter()
        .find(|d| {
            s(d, &["kind"]) == Some("Deployment")
                && s(d, &["metadata", "name"]) == Some("hello")
                && d["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_sequence()
                    .is_some_and(|e| {
                        e.iter().any(|v| {
                            s(v, &["name"]) == Some("http_proxy")
                                && s(v, &["value"]) == Some("$(NODE_NAME):4140")
                        })
                    })
        })
        .expect("hello with http_proxy=$(NODE_NAME):4140");
    let node_name = seq(
        &hello["spec"]["template"]["spec"]["containers"][0],
        &["env"],
    )
    .into_iter()
    .find(|e| s(e, &["name"]) == Some("NODE_NAME"))
    .expect("NODE_NAME");
    assert_eq!(
        s(node_name, &["valueFrom", "fieldRef", "fieldPath"]),
        Some("spec.nodeName")
    );
}

#[test]
fn mesh_proxy_inject_output_validates_and_its_proxy_config_passes() {
    let input = std::fs::read_to_string(k8s_dir().join("inject/hello-world.yaml")).expect("read");
    let out = inject(&input, &InjectOptions::default()).expect("inject");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("injected.yaml");
    std::fs::write(&file, &out).expect("write");
    validate(&[file]).unwrap_or_else(|e| panic!("kubernetes-validate:\n{e}\n{out}"));

    let docs = documents(&out);
    let configs = proxy_configs(&docs);
    assert_eq!(
        configs.keys().collect::<Vec<_>>(),
        ["hello-mesh-proxy", "world-mesh-proxy"]
    );
    assert_eq!(check_proxies(&docs, &configs), 2);
    for (workload, pod) in pods(&docs) {
        let app = &seq(pod, &["containers"])[0];
        let proxy = seq(app, &["env"])
            .into_iter()
            .find(|e| s(e, &["name"]) == Some("http_proxy"))
            .unwrap_or_else(|| panic!("{workload}: no http_proxy"));
        assert_eq!(s(proxy, &["value"]), Some("http://127.0.0.1:4140"));
        let config = &configs[&format!("{workload}-mesh-proxy")];
        let port = app["ports"][0]["containerPort"].as_u64().expect("port");
        assert_eq!(
            config.inbound.as_ref().map(|i| u64::from(i.app.port())),
            Some(port),
            "{workload}: the inbound side fronts the app's port"
        );
        assert_eq!(
            seq(pod, &["volumes"]).len(),
            2,
            "{workload}: config and certs"
        );
    }
}
