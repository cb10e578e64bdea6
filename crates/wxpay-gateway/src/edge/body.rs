//! Request bodies.

use serde::Deserialize;

use crate::edge::error::ApiError;

/// Reads a JSON body; a yuan amount gets a message that says what is expected.
pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        match e.classify() {
            // Well-formed JSON with a wrong field: the request is understood but invalid.
            serde_json::error::Category::Data => {
                // Integers here are only amounts; a yuan amount ("1.50", 1.5) is the classic
                // mistake, so the message says what is expected.
                let hint = if msg.contains("amount_fen") || msg.contains("u64") || msg.contains("floating point") {
                    ": amount_fen is a positive integer number of fen (1 yuan = 100 fen)"
                } else {
                    ""
                };
                ApiError::Invalid(format!("{msg}{hint}"))
            }
            _ => ApiError::BadRequest(format!("the JSON body cannot be read: {msg}")),
        }
    })
}
