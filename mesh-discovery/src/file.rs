//! A file of endpoints (YAML, TOML or JSON), re-read when it changes.
//!
//! # Format
//!
//! The format follows the extension: `.yaml`/`.yml`, `.toml`, `.json` (or set
//! [`FileConfig::format`]). Each entry has an `addr` (required, `IP:PORT`, IPv6 as
//! `[::1]:8080`), a `weight` (default 1, `>= 0`, 0 = drained), `labels` (string to string) and an
//! `identity` (a `spiffe://` URI). Unknown keys are errors, so a typo does not silently drop a
//! setting. YAML and JSON take a list at the top level, or a mapping with an `endpoints` list;
//! TOML takes an array of tables named `endpoints`:
//!
//! ```yaml
//! - addr: 10.0.0.1:8080
//!   weight: 2
//!   labels: {version: v2, zone: eu-1}
//!   identity: spiffe://cluster.local/ns/shop/sa/web
//! - addr: "[fd00::2]:8080"
//! ```
//!
//! ```toml
//! [[endpoints]]
//! addr = "10.0.0.1:8080"
//! weight = 2
//! labels = { version = "v2" }
//! identity = "spiffe://cluster.local/ns/shop/sa/web"
//! ```
//!
//! ```json
//! [{"addr": "10.0.0.1:8080", "weight": 2, "labels": {"version": "v2"}}]
//! ```
//!
//! # Reloading
//!
//! The file is read every [`FileConfig::poll_interval`] (default 1 s) and re-parsed when its
//! content hash changes. Polling was chosen over filesystem notifications because it behaves the
//! same everywhere: inotify/kqueue differ per platform, miss changes on network filesystems, and
//! lose track of a Kubernetes ConfigMap, whose files are replaced by an atomic swap of a `..data`
//! symlink. Hashing the content (rather than trusting the mtime alone) catches an edit made within
//! the filesystem's timestamp resolution. The cost is one read of a small file per interval.
//!
//! # Errors
//!
//! Advisory, like every source: a malformed edit, a missing or unreadable file keeps the last good
//! set and is reported with the file, line and column ([`DiscoveryError::Parse`],
//! [`DiscoveryError::Io`]). An empty file is an error too: it is what a reader sees between an
//! editor's truncate and write, so emptying the set takes an explicit empty list (`[]`, or
//! `endpoints = []` in TOML). A YAML file of only comments (or a bare `~`/`null`) counts as
//! empty for the same reason: YAML reads it as "nothing", not as an empty list. A broken file is reported once, not at every poll; the next good
//! version replaces the set and clears the error.
//!
//! ```no_run
//! use mesh_discovery::{Discovery, FileConfig};
//!
//! # async fn run() -> Result<(), mesh_discovery::DiscoveryError> {
//! let mut discovery = Discovery::file(FileConfig::new("/etc/meshwork/web.yaml"))?;
//! discovery.changed().await?;
//! println!("{} endpoints", discovery.current().len());
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    hash::{Hash, Hasher},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    endpoint::{check_identity, check_weight, DEFAULT_WEIGHT},
    watch::Publisher,
    Discovery, DiscoveryError, Endpoint, EndpointSet,
};

/// Default interval between two reads of the file: 1 s.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The syntax of an endpoint file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// TOML (`.toml`), an array of tables `[[endpoints]]`.
    Toml,
    /// JSON (`.json`).
    Json,
}

/// Configuration of a file source.
#[derive(Clone, Debug, PartialEq)]
pub struct FileConfig {
    /// The file to read. No default: `validate` rejects an empty path.
    pub path: PathBuf,
    /// The syntax; `None` (the default) picks it from the extension.
    pub format: Option<FileFormat>,
    /// How often the file is read; default 1 s ([`DEFAULT_POLL_INTERVAL`]), at least 10 ms.
    pub poll_interval: Duration,
}

// === impl FileFormat ===

impl FileFormat {
    /// The format for `path`'s extension (case-insensitive).
    pub fn from_path(path: &Path) -> Result<Self, DiscoveryError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("yaml" | "yml") => Ok(Self::Yaml),
            Some("toml") => Ok(Self::Toml),
            Some("json") => Ok(Self::Json),
            _ => Err(DiscoveryError::invalid(
                "FileConfig.path",
                path.display(),
                "cannot tell the format: use a .yaml, .yml, .toml or .json extension or set FileConfig.format",
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Yaml => "YAML",
            Self::Toml => "TOML",
            Self::Json => "JSON",
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl FileConfig ===

impl FileConfig {
    /// Watch `path` with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    /// Checks the path, the format and the interval.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        if self.path.as_os_str().is_empty() {
            return Err(DiscoveryError::invalid(
                "FileConfig.path",
                "",
                "no file given",
            ));
        }
        self.resolved_format()?;
        if self.poll_interval < Duration::from_millis(10) {
            return Err(DiscoveryError::invalid(
                "FileConfig.poll_interval",
                format!("{:?}", self.poll_interval),
                "must be at least 10ms",
            ));
        }
        Ok(())
    }

    fn resolved_format(&self) -> Result<FileFormat, DiscoveryError> {
        match self.format {
            Some(f) => Ok(f),
            None => FileFormat::from_path(&self.path),
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            format: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

// === impl Discovery (file) ===

impl Discovery {
    /// Starts watching an endpoint file. The file is read once before this returns, so the
    /// handle's [`current`](Discovery::current) set (or [`last_error`](Discovery::last_error))
    /// already holds what the file says: a client built on it (e.g. by a configuration reload)
    /// never sees an empty set that the file does not list. A task then reads the file every
    /// `poll_interval`; it stops when every handle is dropped. Must be called inside a Tokio
    /// runtime.
    pub fn file(config: FileConfig) -> Result<Self, DiscoveryError> {
        config.validate()?;
        let format = config.resolved_format()?;
        let name = format!("file:{}", config.path.display());
        let (publisher, discovery) = Discovery::channel(name.as_str());
        // One small read at construction, off the request path.
        let seen = apply_read(
            std::fs::read(&config.path),
            Seen::Nothing,
            &config,
            format,
            &publisher,
        );
        Discovery::spawn(&name, watch_file(config, format, publisher, seen))?;
        Ok(discovery)
    }
}

/// What the last read saw, so that an unchanged file (good or bad) is not re-parsed or
/// re-reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Nothing,
    Content(u64),
    Failed(std::io::ErrorKind),
}

async fn watch_file(config: FileConfig, format: FileFormat, publisher: Publisher, mut seen: Seen) {
    loop {
        tokio::select! {
            () = publisher.closed() => return,
            () = tokio::time::sleep(config.poll_interval) => {}
        }
        let read = tokio::fs::read(&config.path).await;
        seen = apply_read(read, seen, &config, format, &publisher);
    }
}

/// Publishes what one read of the file gave, unless it is what the last read saw.
fn apply_read(
    read: std::io::Result<Vec<u8>>,
    seen: Seen,
    config: &FileConfig,
    format: FileFormat,
    publisher: &Publisher,
) -> Seen {
    match read {
        Ok(bytes) => {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            let now = Seen::Content(hasher.finish());
            if now != seen {
                match load(&bytes, format, &config.path) {
                    Ok(set) => publisher.publish(set),
                    Err(error) => publisher.report(error),
                }
            }
            now
        }
        Err(error) => {
            let now = Seen::Failed(error.kind());
            if now != seen {
                publisher.report(DiscoveryError::Io {
                    path: config.path.clone(),
                    source: Arc::new(error),
                });
            }
            now
        }
    }
}

fn load(bytes: &[u8], format: FileFormat, path: &Path) -> Result<EndpointSet, DiscoveryError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DiscoveryError::Io {
        path: path.to_owned(),
        source: Arc::new(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    })?;
    if text.trim().is_empty() {
        // Most likely caught between truncate and write; an intended empty list says so (`[]`).
        return Err(parse_error(
            path,
            format,
            1,
            1,
            "the file is empty; write an empty list (`[]`, `endpoints = []`) to remove every endpoint"
                .to_owned(),
        ));
    }
    parse_endpoints(text, format, path)
}

/// Parses an endpoint list in `format`; `path` names the text in errors. This is what the file
/// source runs on every change, exposed for configuration loaders that embed endpoint lists.
pub fn parse_endpoints(
    text: &str,
    format: FileFormat,
    path: &Path,
) -> Result<EndpointSet, DiscoveryError> {
    let entries = match format {
        FileFormat::Yaml => parse_yaml(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            parse_error(path, format, line, column, e.to_string())
        })?,
        FileFormat::Json => parse_json(text)
            .map_err(|e| parse_error(path, format, e.line(), e.column(), e.to_string()))?,
        FileFormat::Toml => toml::from_str::<Document>(text)
            .map(|d| d.endpoints)
            .map_err(|e| {
                let (line, column) = e
                    .span()
                    .map_or((0, 0), |span| line_column(text, span.start));
                parse_error(path, format, line, column, e.message().to_owned())
            })?,
    };
    let endpoints = entries.into_iter().map(|e| Endpoint {
        addr: e.addr,
        weight: e.weight,
        labels: e.labels,
        identity: e.identity,
    });
    EndpointSet::from_endpoints_named(endpoints, &path.display().to_string())
}

fn parse_yaml(text: &str) -> Result<Vec<Entry>, serde_yaml_ng::Error> {
    // A mapping at the top is the `endpoints:` form; anything else must be the list itself.
    // Deserializing from the text (not from the Value) keeps line numbers in errors.
    let top: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
    match top {
        serde_yaml_ng::Value::Mapping(_) => {
            serde_yaml_ng::from_str::<Document>(text).map(|d| d.endpoints)
        }
        serde_yaml_ng::Value::Null => Err(<serde_yaml_ng::Error as serde::de::Error>::custom(
            "the file holds no YAML value (empty, or only comments); write an empty list (`[]`) \
             to remove every endpoint",
        )),
        _ => serde_yaml_ng::from_str(text),
    }
}

fn parse_json(text: &str) -> Result<Vec<Entry>, serde_json::Error> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str::<Document>(text).map(|d| d.endpoints)
    } else {
        serde_json::from_str(text)
    }
}

fn parse_error(
    path: &Path,
    format: FileFormat,
    line: usize,
    column: usize,
    message: String,
) -> DiscoveryError {
    // serde_json and serde_yaml_ng append " at line L column C"; the error carries those fields.
    let message = match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    };
    DiscoveryError::Parse {
        path: path.to_owned(),
        format: format.name(),
        line,
        column,
        message,
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    endpoints: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    addr: SocketAddr,
    #[serde(default = "default_weight", deserialize_with = "weight")]
    weight: f64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "identity")]
    identity: Option<String>,
}

fn default_weight() -> f64 {
    DEFAULT_WEIGHT
}

// Checked inside the scalar's visitor, so that the parser reports the error at the value's own
// line and column (a check after deserializing would point at the start of the entry).
fn weight<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct Weight;
    impl serde::de::Visitor<'_> for Weight {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a finite number >= 0 (0 = drained)")
        }
        fn visit_f64<E: serde::de::Error>(self, w: f64) -> Result<f64, E> {
            check_weight(w).map_err(|reason| E::custom(format!("weight {w}: {reason}")))?;
            Ok(w)
        }
        fn visit_i64<E: serde::de::Error>(self, w: i64) -> Result<f64, E> {
            self.visit_f64(w as f64)
        }
        fn visit_u64<E: serde::de::Error>(self, w: u64) -> Result<f64, E> {
            self.visit_f64(w as f64)
        }
    }
    d.deserialize_f64(Weight)
}

fn identity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Identity;
    impl serde::de::Visitor<'_> for Identity {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a SPIFFE URI (spiffe://trust-domain/...)")
        }
        fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<String, E> {
            check_identity(id).map_err(|reason| E::custom(format!("identity {id:?}: {reason}")))?;
            Ok(id.to_owned())
        }
    }
    d.deserialize_str(Identity).map(Some)
}

#[cfg(test)]
mod tests;
