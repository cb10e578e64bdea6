//! [`Fields`]: the name/value pairs of an APIv2 message, kept sorted by name.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use crate::sign::{self, Signature};
use crate::{ApiKey, Error, SignType};

/// The fields of an APIv2 message, sorted by name in byte order (the order the signature
/// needs) and never holding one name twice.
///
/// Fields read from a body borrow from it; fields built for a request borrow from the
/// request value. Every field is kept, including ones this crate does not know, so that a
/// signature over "every field received" is exactly that.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    entries: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Fields<'a> {
    /// No fields.
    pub fn new() -> Self {
        Fields { entries: Vec::new() }
    }

    /// No fields, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        Fields {
            entries: Vec::with_capacity(n),
        }
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        let name = name.as_bytes();
        // Bodies and requests usually arrive already sorted, so try the end first.
        match self.entries.last() {
            None => return Err(0),
            Some((last, _)) if cmp_names(last.as_bytes(), name).is_lt() => return Err(self.entries.len()),
            _ => {}
        }
        self.entries.binary_search_by(|(k, _)| cmp_names(k.as_bytes(), name))
    }

    /// Adds a field unless one with that name exists; returns whether it was added.
    pub(crate) fn insert_new(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) -> bool {
        match self.position(&name) {
            Ok(_) => false,
            Err(i) => {
                self.entries.insert(i, (name, value));
                true
            }
        }
    }

    /// Adds a field.
    ///
    /// # Errors
    /// [`Error::InvalidField`] when a field of that name is already present: a message never
    /// carries a name twice, and silently keeping one of two values is how signatures and
    /// amounts get confused.
    pub fn insert(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) -> Result<(), Error> {
        let name = name.into();
        match self.position(&name) {
            Ok(_) => Err(Error::field(&name, "given twice")),
            Err(i) => {
                self.entries.insert(i, (name, value.into()));
                Ok(())
            }
        }
    }

    /// Adds a field when `value` is `Some`.
    ///
    /// # Errors
    /// As [`Fields::insert`].
    pub fn insert_opt<V: Into<Cow<'a, str>>>(&mut self, name: &'a str, value: Option<V>) -> Result<(), Error> {
        match value {
            Some(v) => self.insert(name, v),
            None => Ok(()),
        }
    }

    /// Sets a field, replacing any value it had.
    pub fn set(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        let name = name.into();
        match self.position(&name) {
            Ok(i) => self.entries[i].1 = value.into(),
            Err(i) => self.entries.insert(i, (name, value.into())),
        }
    }

    /// Removes a field and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Cow<'a, str>> {
        self.position(name).ok().map(|i| self.entries.remove(i).1)
    }

    /// The value of a field, if present (possibly empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.position(name).ok().map(|i| &*self.entries[i].1)
    }

    /// The value of a field that must be present and not empty.
    ///
    /// # Errors
    /// [`Error::MissingField`] otherwise.
    pub fn require(&self, name: &str) -> Result<&str, Error> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Error::MissingField(name.to_owned())),
        }
    }

    /// The value of an optional field; an empty value counts as absent, as it does for the
    /// signature.
    pub fn optional(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// The fields in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A copy that borrows nothing.
    pub fn into_owned(self) -> Fields<'static> {
        Fields {
            entries: self
                .entries
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), Cow::Owned(v.into_owned())))
                .collect(),
        }
    }

    /// The signature of these fields: every field except `sign` and empty ones.
    pub fn signature(&self, key: &ApiKey, sign_type: SignType) -> Signature {
        sign::sign_sorted(self.iter(), "sign", key, sign_type)
    }

    /// Computes the signature and stores it in the `sign` field.
    pub fn sign(&mut self, key: &ApiKey, sign_type: SignType) {
        let sig = self.signature(key, sign_type);
        self.set("sign", sig.as_str().to_owned());
    }

    /// Checks the `sign` field against the other fields, with the algorithm the caller
    /// configured. A `sign_type` field in the message does not choose the algorithm; when it
    /// names another one, the message is refused.
    ///
    /// # Errors
    /// [`Error::MissingField`] without `sign`, [`Error::SignTypeMismatch`] when the message
    /// names another algorithm, [`Error::BadSignature`] when the signature does not match.
    pub fn verify(&self, key: &ApiKey, sign_type: SignType) -> Result<(), Error> {
        let received = self.require("sign")?;
        if let Some(claimed) = self.optional("sign_type") {
            if claimed != sign_type.as_str() {
                return Err(Error::SignTypeMismatch {
                    configured: sign_type,
                    received: claimed.to_owned(),
                });
            }
        }
        if self.signature(key, sign_type).matches(received) {
            Ok(())
        } else {
            Err(Error::BadSignature { sign_type })
        }
    }

    /// `stringA`: the sorted `name=value&…` string that is signed, without the key.
    pub fn string_a(&self) -> String {
        sign::string_a(self.iter(), "sign")
    }

    /// The fields as an `<xml>` document, in name order.
    ///
    /// # Errors
    /// As [`crate::xml::write`].
    pub fn to_xml(&self) -> Result<String, Error> {
        crate::xml::write("xml", self.iter())
    }
}

/// Byte order of two names, as `<[u8]>::cmp`, but deciding most comparisons from the first
/// eight bytes held in a register instead of calling `memcmp`: field lookups run dozens of
/// times per message.
#[inline]
pub(crate) fn cmp_names(a: &[u8], b: &[u8]) -> Ordering {
    #[inline]
    fn prefix(s: &[u8]) -> u64 {
        match s.first_chunk::<8>() {
            Some(head) => u64::from_be_bytes(*head),
            None => {
                let mut v = 0u64;
                for (i, c) in s.iter().enumerate() {
                    v |= u64::from(*c) << (56 - 8 * i);
                }
                v
            }
        }
    }
    // Zero padding sorts before every byte but a real zero byte; when the prefixes are equal
    // the full comparison settles it, so the result is always exactly byte order.
    match prefix(a).cmp(&prefix(b)) {
        Ordering::Equal => a.cmp(b),
        other => other,
    }
}

impl fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Fields<'a> {
    /// Collects pairs; of two pairs with one name, the last wins.
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut f = Fields::new();
        for (k, v) in iter {
            f.set(k, v);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_stay_sorted_and_refuse_duplicates() {
        let mut f = Fields::new();
        f.insert("b", "2").unwrap();
        f.insert("a", "1").unwrap();
        f.insert("c", "3").unwrap();
        assert!(f.insert("b", "x").is_err());
        assert_eq!(f.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b", "c"]);
        f.set("b", "4");
        assert_eq!(f.get("b"), Some("4"));
        assert_eq!(f.remove("a").as_deref(), Some("1"));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn the_fast_name_comparison_is_exactly_byte_order() {
        let names: [&[u8]; 12] = [
            b"",
            b"a",
            b"ab",
            b"ab\0",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghi",
            b"abcdefgz",
            b"b",
            b"\xff",
            b"A",
            b"a\0b",
        ];
        for a in names {
            for b in names {
                assert_eq!(cmp_names(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn sort_order_is_by_bytes_so_capitals_come_first() {
        let f: Fields<'_> = [("appid", "1"), ("appId", "2"), ("_x", "3")].into_iter().collect();
        assert_eq!(f.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["_x", "appId", "appid"]);
    }

    #[test]
    fn verify_refuses_a_sign_type_that_differs_from_configuration() {
        let key = ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap();
        let mut f: Fields<'_> = [("a", "1"), ("sign_type", "MD5")].into_iter().collect();
        f.sign(&key, SignType::Md5);
        assert!(f.verify(&key, SignType::Md5).is_ok());
        assert!(matches!(
            f.verify(&key, SignType::HmacSha256),
            Err(Error::SignTypeMismatch { .. })
        ));
    }
}
