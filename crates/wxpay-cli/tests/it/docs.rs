//! What the README and the repository promise a first-time user, checked.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_licenses_the_manifest_declares_are_in_the_repository() {
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains("license = \"MIT OR Apache-2.0\""),
        "the declared license changed"
    );
    assert!(read("LICENSE-MIT").starts_with("MIT License"));
    let apache = read("LICENSE-APACHE");
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"), "the whole text");
}

#[test]
fn the_readme_layout_names_every_crate() {
    let readme = read("README.md");
    let layout = &readme[readme.find("## Layout").expect("a Layout section")..];
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            layout.contains(&format!("`crates/{name}`")),
            "the Layout omits crates/{name}"
        );
    }
}

#[test]
fn the_readme_starts_with_the_two_commands_and_says_what_they_need() {
    let readme = read("README.md");
    let block = readme.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    assert_eq!(block, "cargo run --release -- demo\ncargo test --workspace\n");
    let after = &readme[readme.find("cargo test --workspace\n```").unwrap()..];
    let intro = &after[..after.find("\n## ").unwrap()];
    assert!(intro.contains("C compiler"), "the first build needs cc (ring, SQLite)");
    assert!(intro.contains("several minutes"), "the first build takes minutes");
    assert!(
        intro.contains("DATABASE_URL") && intro.contains("skipped"),
        "PostgreSQL tests"
    );
}

#[test]
fn every_key_file_the_readme_passes_exists_or_is_made_first() {
    let readme = read("README.md");
    let mut made: Vec<&str> = Vec::new();
    for line in readme.lines() {
        if let Some((_, target)) = line.split_once(" > ") {
            made.push(target.split_whitespace().next().unwrap_or(""));
        }
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "--key-file" {
                let file = words.next().unwrap_or_default();
                if file == "FILE" || file.ends_with('`') {
                    continue;
                }
                assert!(
                    made.contains(&file) || Path::new(&repo().join(file)).exists(),
                    "the README passes --key-file {file}, which it neither ships nor makes:\n{line}"
                );
            }
        }
    }
}
