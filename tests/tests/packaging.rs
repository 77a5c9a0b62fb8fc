//! The published crates as crates.io and docs.rs will show them: each package carries its
//! licence files and README, and every link the READMEs and the crate docs make to a guide in
//! `docs/` points at a file the package really contains (docs.rs serves a package's files at
//! `https://docs.rs/crate/<name>/latest/source/<path>`). A relative link would break on
//! crates.io, where a README has no repository to resolve it against.

use std::path::{Path, PathBuf};
use std::process::Command;

use manhole_e2e::run_with_timeout;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The files `cargo package` puts in `package`.
fn package_files(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = run_with_timeout(Command::new(cargo).current_dir(workspace()).args([
        "package",
        "--list",
        "--allow-dirty",
        "--offline",
        "-p",
        package,
    ]));
    assert!(
        output.status.success(),
        "cargo package --list -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every `https://docs.rs/crate/NAME/latest/source/PATH` in `text`, as (NAME, PATH).
fn docs_rs_source_links(text: &str) -> Vec<(String, String)> {
    const PREFIX: &str = "https://docs.rs/crate/";
    text.match_indices(PREFIX)
        .filter_map(|(at, _)| {
            let rest = &text[at + PREFIX.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || matches!(c, ')' | '>' | '`' | '"'))
                .unwrap_or(rest.len());
            let (name, path) = rest[..end].split_once("/latest/source/")?;
            Some((
                name.to_owned(),
                path.trim_end_matches(['.', ',']).to_owned(),
            ))
        })
        .collect()
}

/// The texts that crates.io and docs.rs render: the two READMEs and every library source file
/// (its doc comments become the docs.rs pages).
fn rendered_texts() -> Vec<(PathBuf, String)> {
    let root = workspace();
    let mut files = vec![root.join("README.md"), root.join("manhole-cli/README.md")];
    let mut dirs = vec![root.join("manhole/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect()
}

#[test]
fn each_package_carries_its_licences_readme_and_docs() {
    for package in ["manhole", "manhole-cli"] {
        let files = package_files(package);
        for needed in [
            "LICENSE",
            "LICENSE-MIT",
            "LICENSE-APACHE",
            "README.md",
            "CHANGELOG.md",
            "docs/protocol.md",
        ] {
            assert!(
                files.iter().any(|f| f == needed),
                "{package} lacks {needed}: {files:?}"
            );
        }
    }
}

#[test]
fn links_to_the_guides_point_at_files_the_packages_contain() {
    let manhole = package_files("manhole");
    let cli = package_files("manhole-cli");
    let mut checked = 0;
    for (path, text) in rendered_texts() {
        for (name, file) in docs_rs_source_links(&text) {
            let shipped = match name.as_str() {
                "manhole" => &manhole,
                "manhole-cli" => &cli,
                other => panic!("{}: a link to another crate, {other}", path.display()),
            };
            assert!(
                shipped.contains(&file),
                "{}: links to {file}, which the {name} package does not contain",
                path.display()
            );
            checked += 1;
        }
        for relative in ["](docs/", "](../docs/", "](LICENSE", "](./docs/"] {
            assert!(
                !text.contains(relative),
                "{}: a relative link ({relative}...) breaks on crates.io and docs.rs; link to \
                 https://docs.rs/crate/manhole/latest/source/docs/... instead",
                path.display()
            );
        }
    }
    assert!(checked >= 10, "only {checked} links found");
}
