//! Reliability checklist item 14: signatures are compared in constant time, and nothing
//! can compare them otherwise without this test failing.
//!
//! Two gates: `Signature` has no `PartialEq` (so `==` on one does not compile; checked here
//! at compile time), and no source file of the workspace compares a value named like a
//! signature with `==` or `!=` (a comparison of the strings behind it would stop at the
//! first difference).

use std::path::{Path, PathBuf};

use wxpay_protocol::sign::Signature;

/// `IsEq::<T>::EQ` is true exactly when `T: PartialEq`: an inherent constant (which needs
/// the bound) is found before the trait's (which does not).
struct IsEq<T>(std::marker::PhantomData<T>);

trait NotEq {
    const EQ: bool = false;
}

impl<T> NotEq for IsEq<T> {}

impl<T: PartialEq> IsEq<T> {
    #[allow(dead_code)]
    const EQ: bool = true;
}

// Checked when this test compiles: Signature must not implement PartialEq, and the check
// itself tells the two apart.
const _: () = assert!(!IsEq::<Signature>::EQ);
const _: () = assert!(IsEq::<String>::EQ);

/// Whether an identifier names a signature: `sign`, `sig`, `pay_sign`, `received_sig`,
/// `signature`… but not `sign_type`, `sign_name`, `signer` or a type (`NotifyBadSignature`).
fn names_a_signature(ident: &str) -> bool {
    if ident.chars().any(|c| c.is_ascii_uppercase()) {
        return false;
    }
    matches!(ident, "sign" | "sig" | "paysign")
        || ident.ends_with("_sign")
        || ident.ends_with("_sig")
        || ident.contains("signature")
}

/// The identifiers of an operand: `pay_sign.as_str()` → `pay_sign`, `as_str`.
fn identifiers(operand: &str) -> impl Iterator<Item = &str> {
    operand
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// Whether a line of code compares a signature with `==` or `!=`: an operand right beside
/// the operator names one. (Comments are not code.)
fn compares_a_signature(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let operand_char = |c: char| c.is_ascii_alphanumeric() || "_.()&*:".contains(c);
    let mut rest = code;
    while let Some(i) = rest.find("==").into_iter().chain(rest.find("!=")).min() {
        let (left, right) = (&rest[..i], &rest[i + 2..]);
        let left = left.trim_end();
        let left_operand = &left[left.rfind(|c: char| !operand_char(c)).map_or(0, |j| j + 1)..];
        let right = right.trim_start();
        let right_operand = &right[..right.find(|c: char| !operand_char(c)).unwrap_or(right.len())];
        if identifiers(left_operand)
            .chain(identifiers(right_operand))
            .any(names_a_signature)
        {
            return true;
        }
        rest = &rest[i + 2..];
    }
    false
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_gate_finds_comparisons_of_signatures() {
    for bad in [
        "if received_sign == expected {",
        "    return sig != other;",
        "let ok = pay_sign.as_str() == body.sign;",
        "assert!(signature == x)",
    ] {
        assert!(compares_a_signature(bad), "{bad}");
    }
    for fine in [
        "if sign_type == SignType::Md5 {",
        "let signer = x == y;",
        "if signed.matches(&received) {",
        "// a comment: sign == x is what we must never write",
        "let n = signatures.len();",
        ".filter(|(k, _)| k != body.sign_name)",
        "|| k == \"paySign\");",
        "if sig.signature.is_empty() && status == 401 {",
        "let key = if kind == Some(FaultKind::NotifyBadSignature) {",
    ] {
        assert!(!compares_a_signature(fine), "{fine}");
    }
}

#[test]
fn no_source_compares_a_signature_with_eq() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = krate.path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 50, "the workspace's sources were found: {}", files.len());
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if compares_a_signature(line) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "compare signatures with Signature::matches or subtle's ct_eq:\n{}",
        found.join("\n")
    );
}
