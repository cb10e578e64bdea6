//! Properties over generated inputs: the writer and reader round-trip any field set, a
//! signature verifies and any one-byte change breaks it, and no input makes the reader panic.

use std::collections::BTreeMap;

use proptest::prelude::*;
use wxpay_protocol::{ApiKey, Fields, SignType, sign, xml};

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_.-]{0,20}"
}

/// Any value XML 1.0 can carry, with the awkward pieces (`]]>`, CR, `&`, `<`) made likely.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\u{0}-\u{8}\u{b}\u{c}\u{e}-\u{1f}\u{fffe}\u{ffff}]{0,40}",
        "(\\]\\]>|\r|\r\n|&|<|>|\\]|[a-z]|中|\t| ){0,12}",
        "[0-9]{1,6}",
    ]
}

fn field_set() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(name(), value(), 0..24)
}

fn sign_type() -> impl Strategy<Value = SignType> {
    prop_oneof![Just(SignType::Md5), Just(SignType::HmacSha256)]
}

fn api_key() -> impl Strategy<Value = ApiKey> {
    "[A-Za-z0-9]{32}".prop_map(|k| ApiKey::new(k).unwrap())
}

/// What XML does to line ends: CR LF and lone CR become LF unless escaped, which the writer
/// does; so a value reads back byte for byte.
fn fields_of(map: &BTreeMap<String, String>) -> Fields<'_> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn writing_then_reading_round_trips_any_field_set(map in field_set()) {
        let fields = fields_of(&map);
        let body = fields.to_xml().unwrap();
        let back = xml::read(body.as_bytes()).unwrap();
        prop_assert_eq!(back.len(), map.len());
        for (k, v) in &map {
            prop_assert_eq!(back.get(k), Some(v.as_str()), "field {} in {}", k, body);
        }
    }

    #[test]
    fn a_signed_body_verifies(map in field_set(), key in api_key(), t in sign_type()) {
        let mut fields = fields_of(&map);
        fields.remove("sign");
        fields.remove("sign_type");
        fields.sign(&key, t);
        let body = fields.to_xml().unwrap();
        let back = xml::read(body.as_bytes()).unwrap();
        prop_assert!(back.verify(&key, t).is_ok());
    }

    #[test]
    fn any_one_byte_change_to_a_signed_body_breaks_it(
        map in prop::collection::btree_map(name(), "[a-z0-9]{1,12}", 1..12),
        key in api_key(),
        t in sign_type(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut fields = fields_of(&map);
        fields.remove("sign");
        fields.remove("sign_type");
        fields.sign(&key, t);
        let body = fields.to_xml().unwrap().into_bytes();
        let i = at.index(body.len());
        prop_assume!(body[i] != byte);
        let mut changed = body.clone();
        changed[i] = byte;
        // Either the reader refuses the changed body, or the signature no longer matches.
        if let Ok(f) = xml::read(&changed) {
            prop_assert!(f.verify(&key, t).is_err(), "{}", String::from_utf8_lossy(&changed));
        }
    }

    #[test]
    fn any_one_byte_change_to_the_signed_string_changes_the_signature(
        s in "[ -~]{1,200}",
        t in sign_type(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = s.as_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        let mut changed = bytes.to_vec();
        changed[i] = byte;
        let key = b"192006250b4c09247ec02edce69f6a2d";
        let (before, after) = (sign::sign_string(bytes, key, t), sign::sign_string(&changed, key, t));
        prop_assert_ne!(before.as_str(), after.as_str());
    }

    #[test]
    fn the_reader_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = xml::read(&body);
    }

    #[test]
    fn the_reader_never_panics_on_near_miss_documents(
        map in field_set(),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut body = fields_of(&map).to_xml().unwrap().into_bytes();
        for (at, byte) in cuts {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let _ = xml::read(&body);
        let _ = xml::read(&body[..body.len() / 2]);
    }
}
