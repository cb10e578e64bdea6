//! Helpers for reading a request on WeChat Pay's side, shared by the message families: the
//! request's unknown fields, and a field's value parsed with the field named in its error.

use std::collections::BTreeMap;

use crate::{Error, Fields};

/// The fields every request carries besides its own; sorted.
const REQUEST_ENVELOPE: &[&str] = &["appid", "mch_id", "nonce_str", "sign", "sign_type"];

/// The fields of a request not in `known` (sorted) nor in the envelope.
pub(super) fn request_extra(f: &Fields<'_>, known: &[&str]) -> BTreeMap<String, String> {
    super::unknown_fields(f, REQUEST_ENVELOPE, known, &[])
}

pub(super) fn parse_with<T>(
    f: &Fields<'_>,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, Error>,
) -> Result<T, Error> {
    parse(f.require(name)?).map_err(|e| in_field(name, e))
}

/// A value's error as an error of the field it came from.
pub(super) fn in_field(name: &str, e: Error) -> Error {
    match e {
        Error::Invalid { reason, .. } => Error::field(name, reason),
        other => other,
    }
}
