//! Sidecar injection, as `istioctl kube-inject` and `linkerd inject` do it: read Kubernetes YAML,
//! add a mesh-proxy container to each workload's pod template, and write the YAML back
//! (`mesh-proxy inject FILE`).
//!
//! For every `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`, `Job` and `Pod`:
//!
//! * a container `mesh-proxy` running `mesh-proxy run /etc/mesh-proxy/proxy.toml`, with the ports
//!   `mesh-outbound` 4140, `mesh-inbound` 4143 and `mesh-admin` 9990, readiness on the admin
//!   port's `/ready` and liveness on `/live`;
//! * the volumes it mounts: the ConfigMap `<name>-mesh-proxy` (key `proxy.toml`) at
//!   `/etc/mesh-proxy` and the Secret `<name>-mesh-certs` (`tls.crt`, `tls.key`, `ca.crt`: the
//!   workload's certificate, key and the mesh's CA) at `/var/run/mesh/certs`;
//! * `http_proxy=http://127.0.0.1:4140` in every application container, so that their HTTP calls
//!   go through the proxy;
//! * `terminationGracePeriodSeconds` of at least 30 s, longer than the proxy's drain
//!   (`drain_timeout`, default 10 s), so requests in flight finish when the pod stops.
//!
//! Unless the input already holds it, the ConfigMap is added too, with a proxy configuration for
//! the workload: inbound mTLS in permissive mode (so callers outside the mesh keep working while
//! the rest of the mesh is injected) in front of the application's first `containerPort`, and
//! outbound routing by Host through the dtab `/svc => /srv;` — add a `[[service]]` per
//! destination (a headless Service's DNS name) to it. Other documents pass through unchanged.
//! A workload that already has a `mesh-proxy` container is an error rather than injected twice.
//!
//! ```
//! use meshwork::config::inject::{inject, InjectOptions};
//!
//! let app = r#"
//! apiVersion: apps/v1
//! kind: Deployment
//! metadata: { name: world }
//! spec:
//!   selector: { matchLabels: { app: world } }
//!   template:
//!     metadata: { labels: { app: world } }
//!     spec:
//!       containers:
//!       - { name: world, image: "example/world:1", ports: [ { containerPort: 8080 } ] }
//! "#;
//! let out = inject(app, &InjectOptions::default()).unwrap();
//! assert!(out.contains("name: mesh-proxy"));
//! assert!(out.contains("http://127.0.0.1:4140"));
//! assert!(out.contains("app = \"127.0.0.1:8080\""));
//! assert!(inject(&out, &InjectOptions::default()).is_err()); // not twice
//! ```

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

/// The proxy image the sidecar runs unless [`InjectOptions::image`] says otherwise.
pub const DEFAULT_IMAGE: &str = "meshwork/mesh-proxy:0.1.0";
/// The sidecar container's name.
pub const CONTAINER: &str = "mesh-proxy";
/// Where the sidecar finds its configuration (the ConfigMap's key `proxy.toml`).
pub const CONFIG_DIR: &str = "/etc/mesh-proxy";
/// Where the sidecar finds its certificate, key and CA (the Secret's `tls.crt`, `tls.key`,
/// `ca.crt`).
pub const CERTS_DIR: &str = "/var/run/mesh/certs";
/// What application containers get as `http_proxy`.
pub const HTTP_PROXY: &str = "http://127.0.0.1:4140";

const KINDS: [&str; 6] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "Pod",
];

/// How to inject. `Default` is the image [`DEFAULT_IMAGE`] and names derived from the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectOptions {
    /// The sidecar's image.
    pub image: String,
    /// The ConfigMap to mount; default `<workload>-mesh-proxy`.
    pub config_map: Option<String>,
    /// The Secret with the workload's credentials; default `<workload>-mesh-certs`.
    pub secret: Option<String>,
}

impl Default for InjectOptions {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            config_map: None,
            secret: None,
        }
    }
}

/// Why the input could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A document is not valid YAML.
    #[error("document {document}: invalid YAML: {message}")]
    Yaml {
        /// 1-based position of the document in the input.
        document: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A workload has a shape that cannot be injected (no containers, a field of the wrong type).
    #[error("{kind} {name:?}: {problem}")]
    Shape {
        /// The workload's kind.
        kind: String,
        /// Its `metadata.name`.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The workload already has a `mesh-proxy` container.
    #[error("{kind} {name:?} already has a {CONTAINER} container")]
    AlreadyInjected {
        /// The workload's kind.
        kind: String,
        /// Its `metadata.name`.
        name: String,
    },
    /// The input holds no workload to inject.
    #[error("no Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or Pod in the input")]
    NoWorkload,
}

/// Injects the sidecar into every workload of `yaml` (one or more documents) and returns the
/// documents, with the generated ConfigMaps after the workloads.
pub fn inject(yaml: &str, options: &InjectOptions) -> Result<String, InjectError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let doc = Value::deserialize(de).map_err(|e| InjectError::Yaml {
            document: i + 1,
            message: e.to_string(),
        })?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    let existing: Vec<String> = docs
        .iter()
        .filter(|d| str_at(d, &["kind"]) == Some("ConfigMap"))
        .filter_map(|d| str_at(d, &["metadata", "name"]).map(str::to_owned))
        .collect();
    let mut added = Vec::new();
    let mut injected = 0;
    for doc in &mut docs {
        let Some(kind) = str_at(doc, &["kind"]).filter(|k| KINDS.contains(k)) else {
            continue;
        };
        let kind = kind.to_owned();
        let name = str_at(doc, &["metadata", "name"])
            .unwrap_or("workload")
            .to_owned();
        let namespace = str_at(doc, &["metadata", "namespace"]).map(str::to_owned);
        let config_map = options
            .config_map
            .clone()
            .unwrap_or_else(|| format!("{name}-mesh-proxy"));
        let secret = options
            .secret
            .clone()
            .unwrap_or_else(|| format!("{name}-mesh-certs"));
        let shape = |problem: &str| InjectError::Shape {
            kind: kind.clone(),
            name: name.clone(),
            problem: problem.to_owned(),
        };
        let pod = if kind == "Pod" {
            mapping_at(doc, &["spec"])
        } else {
            mapping_at(doc, &["spec", "template", "spec"])
        }
        .ok_or_else(|| shape("no pod spec (spec.template.spec) to inject into"))?;
        let app_port = inject_pod(pod, options, &config_map, &secret).map_err(|e| match e {
            PodError::Injected => InjectError::AlreadyInjected {
                kind: kind.clone(),
                name: name.clone(),
            },
            PodError::Shape(problem) => shape(problem),
        })?;
        injected += 1;
        if !existing.contains(&config_map) && !added.iter().any(|(n, _)| n == &config_map) {
            let text = proxy_config(&name, app_port);
            added.push((
                config_map.clone(),
                config_map_doc(&config_map, namespace, text),
            ));
        }
    }
    if injected == 0 {
        return Err(InjectError::NoWorkload);
    }
    docs.extend(added.into_iter().map(|(_, doc)| doc));
    let mut out = String::new();
    for doc in &docs {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        let text = serde_yaml_ng::to_string(doc).map_err(|e| InjectError::Yaml {
            document: 0,
            message: e.to_string(),
        })?;
        out.push_str(&text);
    }
    Ok(out)
}

/// [`inject`] of a file's contents (`-` reads standard input).
pub fn inject_file(path: &std::path::Path, options: &InjectOptions) -> Result<String, String> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    inject(&text, options).map_err(|e| format!("{}: {e}", path.display()))
}

/// The proxy configuration a generated ConfigMap holds for workload `name`.
pub fn proxy_config(name: &str, app_port: Option<u16>) -> String {
    let inbound = match app_port {
        Some(port) => {
            format!("[inbound]\nlisten = \"0.0.0.0:4143\"\napp = \"127.0.0.1:{port}\"\n\n")
        }
        None => String::new(),
    };
    format!(
        "# mesh-proxy for {name}, written by `mesh-proxy inject`. Add a [[service]] per destination,\n\
         # e.g. name = \"/srv/world\", dns = \"world.NAMESPACE.svc.cluster.local:4143\",\n\
         # identity = \"spiffe://cluster.local/ns/NAMESPACE/sa/world\".\n\
         [outbound]\nlisten = \"127.0.0.1:4140\"\ndtab = \"/svc => /srv;\"\n\n\
         {inbound}\
         [admin]\nlisten = \"0.0.0.0:9990\"\n\n\
         [tls]\nchain = \"{CERTS_DIR}/tls.crt\"\nkey = \"{CERTS_DIR}/tls.key\"\n\
         trust_bundle = \"{CERTS_DIR}/ca.crt\"\nmode = \"permissive\"\n"
    )
}

enum PodError {
    Injected,
    Shape(&'static str),
}

/// Adds the sidecar, volumes and `http_proxy` to a pod spec; returns the app's first port.
fn inject_pod(
    pod: &mut Mapping,
    options: &InjectOptions,
    config_map: &str,
    secret: &str,
) -> Result<Option<u16>, PodError> {
    let containers = pod
        .get_mut("containers")
        .and_then(Value::as_sequence_mut)
        .filter(|c| !c.is_empty())
        .ok_or(PodError::Shape("no containers"))?;
    if containers
        .iter()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER))
    {
        return Err(PodError::Injected);
    }
    let app_port = containers
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
        })
        .find_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .and_then(|p| u16::try_from(p).ok());
    for container in containers.iter_mut() {
        let container = container
            .as_mapping_mut()
            .ok_or(PodError::Shape("a container is not a mapping"))?;
        let env = container
            .entry("env".into())
            .or_insert_with(|| Value::Sequence(Vec::new()))
            .as_sequence_mut()
            .ok_or(PodError::Shape("a container's env is not a list"))?;
        env.retain(|e| e.get("name").and_then(Value::as_str) != Some("http_proxy"));
        env.push(yaml(&format!(
            "{{name: http_proxy, value: \"{HTTP_PROXY}\"}}"
        )));
    }
    containers.push(sidecar(&options.image));

    let volumes = pod
        .entry("volumes".into())
        .or_insert_with(|| Value::Sequence(Vec::new()))
        .as_sequence_mut()
        .ok_or(PodError::Shape("spec.volumes is not a list"))?;
    volumes.retain(|v| {
        !matches!(
            v.get("name").and_then(Value::as_str),
            Some("mesh-proxy-config" | "mesh-certs")
        )
    });
    volumes.push(yaml(&format!(
        "{{name: mesh-proxy-config, configMap: {{name: \"{config_map}\"}}}}"
    )));
    volumes.push(yaml(&format!(
        "{{name: mesh-certs, secret: {{secretName: \"{secret}\"}}}}"
    )));

    let grace = pod
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if grace < 30 {
        pod.insert("terminationGracePeriodSeconds".into(), Value::from(30));
    }
    Ok(app_port)
}

fn sidecar(image: &str) -> Value {
    yaml(&format!(
        r#"
name: {CONTAINER}
image: "{image}"
args: ["run", "{CONFIG_DIR}/proxy.toml"]
ports:
- {{name: mesh-outbound, containerPort: 4140}}
- {{name: mesh-inbound, containerPort: 4143}}
- {{name: mesh-admin, containerPort: 9990}}
readinessProbe:
  httpGet: {{path: /ready, port: 9990}}
  periodSeconds: 5
livenessProbe:
  httpGet: {{path: /live, port: 9990}}
  periodSeconds: 10
resources:
  requests: {{cpu: 10m, memory: 16Mi}}
volumeMounts:
- {{name: mesh-proxy-config, mountPath: "{CONFIG_DIR}", readOnly: true}}
- {{name: mesh-certs, mountPath: "{CERTS_DIR}", readOnly: true}}
"#
    ))
}

fn config_map_doc(name: &str, namespace: Option<String>, text: String) -> Value {
    let mut metadata = Mapping::new();
    metadata.insert("name".into(), name.into());
    if let Some(ns) = namespace {
        metadata.insert("namespace".into(), ns.into());
    }
    let mut data = Mapping::new();
    data.insert("proxy.toml".into(), text.into());
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), "v1".into());
    doc.insert("kind".into(), "ConfigMap".into());
    doc.insert("metadata".into(), Value::Mapping(metadata));
    doc.insert("data".into(), Value::Mapping(data));
    Value::Mapping(doc)
}

/// A YAML literal this module writes; it always parses, so a failure is a bug shown as null.
fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or(Value::Null)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

fn mapping_at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Mapping> {
    path.iter()
        .try_fold(v, |v, key| v.get_mut(*key))
        .and_then(Value::as_mapping_mut)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const APP: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: hello }
spec: { clusterIP: None, selector: { app: hello }, ports: [ { name: http, port: 8080 } ] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: hello, namespace: shop }
spec:
  selector: { matchLabels: { app: hello } }
  template:
    metadata: { labels: { app: hello } }
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: hello
        image: example/hello:1
        ports: [ { containerPort: 7000 } ]
        env: [ { name: http_proxy, value: "http://elsewhere:3128" }, { name: MODE, value: x } ]
      - name: helper
        image: example/helper:1
"#;

    fn pod(out: &str, n: usize) -> Value {
        let doc = serde_yaml_ng::Deserializer::from_str(out).nth(n).unwrap();
        let v = Value::deserialize(doc).unwrap();
        v["spec"]["template"]["spec"].clone()
    }

    #[test]
    fn every_app_container_gets_http_proxy_and_the_pod_the_sidecar_and_volumes() {
        let out = inject(APP, &InjectOptions::default()).unwrap();
        let spec = pod(&out, 1);
        let containers = spec["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 3);
        for c in &containers[..2] {
            let proxies: Vec<&str> = c["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == "http_proxy")
                .map(|e| e["value"].as_str().unwrap())
                .collect();
            assert_eq!(proxies, [HTTP_PROXY], "one http_proxy, the mesh's");
        }
        assert_eq!(containers[0]["env"][0]["name"], "MODE", "other env kept");
        assert_eq!(containers[2]["name"], CONTAINER);
        assert_eq!(containers[2]["readinessProbe"]["httpGet"]["port"], 9990);
        let volumes = spec["volumes"].as_sequence().unwrap();
        assert_eq!(volumes[0]["configMap"]["name"], "hello-mesh-proxy");
        assert_eq!(volumes[1]["secret"]["secretName"], "hello-mesh-certs");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        // The Service passes through; the ConfigMap comes last, in the workload's namespace,
        // with a configuration that the proxy accepts, in front of the app's port.
        assert!(out.starts_with("apiVersion: v1\nkind: Service\n"), "{out}");
        let cm = Value::deserialize(serde_yaml_ng::Deserializer::from_str(&out).nth(2).unwrap())
            .unwrap();
        assert_eq!(cm["metadata"]["namespace"], "shop");
        let toml = cm["data"]["proxy.toml"].as_str().unwrap();
        let config = crate::config::Config::parse("proxy.toml", toml).unwrap();
        assert_eq!(
            config.inbound.unwrap().app,
            "127.0.0.1:7000".parse().unwrap()
        );
    }

    #[test]
    fn injecting_twice_is_refused_and_bad_input_is_a_typed_error() {
        let once = inject(APP, &InjectOptions::default()).unwrap();
        assert!(matches!(
            inject(&once, &InjectOptions::default()),
            Err(InjectError::AlreadyInjected { name, .. }) if name == "hello"
        ));
        assert!(matches!(
            inject(
                "kind: Service\nmetadata: {name: x}\n",
                &InjectOptions::default()
            ),
            Err(InjectError::NoWorkload)
        ));
        let err = inject("kind: Deployment\nspec: [", &InjectOptions::default()).unwrap_err();
        assert!(
            matches!(err, InjectError::Yaml { document: 1, .. }),
            "{err}"
        );
        let err = inject(
            "kind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: []}}}\n",
            &InjectOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Deployment \"x\": no containers");
    }

    #[test]
    fn named_config_map_and_secret_are_used_and_an_existing_config_map_is_kept() {
        let input = format!(
            "{APP}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shared}}\ndata: {{}}\n"
        );
        let options = InjectOptions {
            image: "registry.local/mesh-proxy:dev".into(),
            config_map: Some("shared".into()),
            secret: Some("hello-certs".into()),
        };
        let out = inject(&input, &options).unwrap();
        let spec = pod(&out, 1);
        assert_eq!(spec["volumes"][0]["configMap"]["name"], "shared");
        assert_eq!(spec["volumes"][1]["secret"]["secretName"], "hello-certs");
        assert_eq!(
            spec["containers"][2]["image"],
            "registry.local/mesh-proxy:dev"
        );
        assert_eq!(out.matches("kind: ConfigMap").count(), 1, "{out}");
    }
}
