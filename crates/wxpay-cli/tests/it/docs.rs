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

/// A README's headings (level and text) and fenced code blocks (info string and lines).
struct Outline {
    headings: Vec<(usize, String)>,
    blocks: Vec<(String, Vec<String>)>,
    table_rows: usize,
}

fn outline(text: &str) -> Outline {
    let mut out = Outline {
        headings: Vec::new(),
        blocks: Vec::new(),
        table_rows: 0,
    };
    let mut block: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        if let Some((info, lines)) = &mut block {
            if line.starts_with("```") {
                out.blocks.push((std::mem::take(info), std::mem::take(lines)));
                block = None;
            } else {
                lines.push(line.to_owned());
            }
        } else if let Some(info) = line.strip_prefix("```") {
            block = Some((info.to_owned(), Vec::new()));
        } else if line.starts_with('#') {
            let level = line.bytes().take_while(|&b| b == b'#').count();
            out.headings.push((level, line[level..].trim().to_owned()));
        } else if line.starts_with('|') {
            out.table_rows += 1;
        }
    }
    out
}

/// A line of code with its comment removed (a translation may translate comments, nothing
/// else): `None` for a line that is all comment.
fn code_only(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with("//") {
        return None;
    }
    Some(line.find("  # ").map_or(line, |at| &line[..at]).trim_end())
}

#[test]
fn the_chinese_readme_has_the_sections_commands_and_code_of_the_english_one() {
    let (en, zh) = (read("README.md"), read("README.zh-CN.md"));
    let (e, z) = (outline(&en), outline(&zh));
    let levels = |o: &Outline| o.headings.iter().map(|(l, _)| *l).collect::<Vec<_>>();
    assert_eq!(levels(&e), levels(&z), "the same sections, in the same order");
    assert_eq!(e.table_rows, z.table_rows, "the same table rows");
    assert_eq!(e.blocks.len(), z.blocks.len(), "the same number of code blocks");
    for (i, ((ei, el), (zi, zl))) in e.blocks.iter().zip(&z.blocks).enumerate() {
        assert_eq!(ei, zi, "code block {i}: the same language");
        let code = |lines: &[String]| {
            lines
                .iter()
                .filter_map(|l| code_only(l).map(str::to_owned))
                .collect::<Vec<_>>()
        };
        assert_eq!(code(el), code(zl), "code block {i} (comments aside)");
    }
    // Both start with the same two commands, and each links to the other.
    assert_eq!(e.blocks[0], z.blocks[0]);
    assert!(zh.starts_with("# wxpay\n\n```sh\ncargo run --release -- demo\ncargo test --workspace\n```"));
    assert!(en.contains("[简体中文](README.zh-CN.md)") && zh.contains("[English](README.md)"));
    // A heading that names code names the same code in both.
    for ((_, et), (_, zt)) in e.headings.iter().zip(&z.headings) {
        let spans = |t: &str| t.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(spans(et), spans(zt), "{et} / {zt}");
    }
}

#[test]
fn an_outline_tells_a_comment_from_code() {
    assert_eq!(
        code_only("wxpay serve --config wxpay.toml   # 启动"),
        Some("wxpay serve --config wxpay.toml")
    );
    assert_eq!(code_only("  # a comment"), None);
    assert_eq!(code_only("// 注释"), None);
    let o = outline("# t\n\n```sh\n# x\nls\n```\n## a `b`\n| c |\n");
    assert_eq!(o.headings, [(1, "t".to_owned()), (2, "a `b`".to_owned())]);
    assert_eq!(o.blocks, [("sh".to_owned(), vec!["# x".to_owned(), "ls".to_owned()])]);
    assert_eq!(o.table_rows, 1);
}
