//! Shared helpers: where the vectors are, test merchants, and a stand-in for WeChat Pay's
//! side of a call (it signs answers with the merchant's key, as WeChat Pay does).

use std::path::PathBuf;

use wxpay_protocol::{ApiKey, AppId, Fields, MchId, Merchant, SignType};

/// The vectors copied unchanged from the shared research folder into the repository.
pub(crate) fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
}

pub(crate) fn load_json(name: &str) -> serde_json::Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub(crate) const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

pub(crate) fn merchant(sign_type: SignType) -> Merchant {
    Merchant {
        appid: AppId::new("wxd678efh567hg6787").unwrap(),
        mch_id: MchId::new("1230000109").unwrap(),
        key: ApiKey::new(KEY).unwrap(),
        sign_type,
    }
}

/// An answer as WeChat Pay would send it: the common success fields, the given business
/// fields, a nonce, and the signature with the merchant's key and algorithm.
pub(crate) fn answer(m: &Merchant, business: &[(&str, &str)]) -> String {
    let mut f: Fields<'_> = [
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", m.appid.as_str()),
        ("mch_id", m.mch_id.as_str()),
        ("nonce_str", "IITRi8Iabbblz1Jc"),
        ("result_code", "SUCCESS"),
    ]
    .into_iter()
    .collect();
    for (k, v) in business {
        f.set(*k, *v);
    }
    f.sign(&m.key, m.sign_type);
    f.to_xml().unwrap()
}
