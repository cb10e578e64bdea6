//! The golden fixtures' index, shared by the protocol's and the gateway's golden tests (the
//! gateway's includes this file with `#[path]`).

use serde_json::Value;

/// The folder of the golden fixtures.
pub(crate) fn golden_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/golden")
}

/// `golden.json`, the index `make_golden.py` writes.
pub(crate) fn index() -> Value {
    let path = golden_dir().join("golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The cases of one list in the index. The count is fixed so that an empty or truncated
/// index cannot pass by having nothing to check.
pub(crate) fn cases<'a>(doc: &'a Value, list: &str, expected: usize) -> &'a [Value] {
    let cases = doc[list]
        .as_array()
        .unwrap_or_else(|| panic!("golden.json has no list {list:?}"));
    assert_eq!(
        cases.len(),
        expected,
        "golden.json: {list} should hold {expected} cases"
    );
    cases
}

/// A string field of a case.
pub(crate) fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("golden.json: {k} missing in {v}"))
}
