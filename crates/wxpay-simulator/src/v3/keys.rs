//! WeChat Pay's APIv3 keys as the simulator holds them: the platform key and certificate,
//! the WeChat Pay public key (`PUB_KEY_ID_…`), and the keys of merchants whose certificate
//! the simulator issues itself (the built-in test merchant). Each set is made at first start
//! in the keys folder and read back later, so that clients configured with those files keep
//! working across restarts.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_RSA_SHA256, SerialNumber};
use wxpay_protocol::v3::{Certificate, MerchantKey, PublicKey};
use wxpay_protocol::{BeijingTime, MchId};

use crate::tls::{io, write_private};

/// The files of the platform key and certificate and the WeChat Pay public key, as
/// `../shared/docs/product.md` names them.
#[derive(Clone, Debug)]
pub struct V3Files {
    /// The keys folder.
    pub dir: PathBuf,
    /// `platform_cert.pem`: what `/v3/certificates` lists, and what verifies answers signed
    /// in certificate mode.
    pub platform_cert: PathBuf,
    /// `pub_key.pem`: the WeChat Pay public key, what verifies answers in public-key mode.
    pub pub_key: PathBuf,
    /// The public key's id (`PUB_KEY_ID_…`), as `pub_key_id` holds it.
    pub pub_key_id: String,
    /// `pub_key_private.pem`: the private half, for tests that forge their own notifications.
    pub pub_key_private: PathBuf,
}

/// A key that signs as WeChat Pay, with the id `Wechatpay-Serial` names.
pub(crate) struct SigningKey {
    pub key: MerchantKey,
}

impl SigningKey {
    pub(crate) fn id(&self) -> &str {
        self.key.serial_no()
    }
}

/// The platform certificate and its key.
pub(crate) struct Platform {
    pub signing: SigningKey,
    pub cert_pem: String,
    /// When the certificate takes effect and expires (Unix seconds), as `/v3/certificates`
    /// lists them.
    pub not_before: i64,
    pub not_after: i64,
}

/// How long a platform certificate lasts: five years, as WeChat Pay's do.
const PLATFORM_CERT_YEARS: i32 = 5;

/// A fresh RSA-2048 key (aws-lc-rs, which the protocol crate signs with), PKCS#8 PEM.
fn generate_key() -> std::io::Result<String> {
    use aws_lc_rs::encoding::AsDer;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(io)?;
    let der = key.as_der().map_err(io)?;
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref());
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_RSA_SHA256)
        .map_err(io)?
        .serialize_pem())
}

/// The public half of a PKCS#8 key, SubjectPublicKeyInfo PEM.
fn public_pem(private_pem: &str) -> std::io::Result<String> {
    Ok(KeyPair::from_pem_and_sign_algo(private_pem, &PKCS_RSA_SHA256)
        .map_err(io)?
        .public_key_pem())
}

/// Sixteen random bytes, the first between 0x10 and 0x7f: a positive serial whose hex has no
/// leading zero, so every reader prints it the same way.
fn serial_bytes() -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..2).flat_map(|_| crate::ids::random_u64().to_be_bytes()).collect();
    bytes[0] = 0x10 + bytes[0] % 0x70;
    bytes
}

/// A certificate for `key_pem`, signed by the key itself, with a CN and a validity.
fn self_signed(key_pem: &str, cn: &str, org: &str, from_year: i32, years: i32) -> std::io::Result<String> {
    let key = KeyPair::from_pem_and_sign_algo(key_pem, &PKCS_RSA_SHA256).map_err(io)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(io)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.distinguished_name.push(DnType::OrganizationName, org);
    params.serial_number = Some(SerialNumber::from_slice(&serial_bytes()));
    params.not_before = rcgen::date_time_ymd(from_year, 1, 1);
    params.not_after = rcgen::date_time_ymd(from_year + years, 1, 1);
    Ok(params.self_signed(&key).map_err(io)?.pem())
}

fn read(path: &Path) -> std::io::Result<String> {
    fs::read_to_string(path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
}

fn signing_key(path: &Path, pem: &str, id: &str) -> std::io::Result<SigningKey> {
    let key = MerchantKey::from_pem(pem, id).map_err(|e| invalid(path, e))?;
    Ok(SigningKey { key })
}

/// The year (in Beijing) of `now`.
fn year_of(now: i64) -> i32 {
    BeijingTime::from_unix(now).to_dashed()[..4].parse().unwrap_or(2026)
}

/// A new platform key and its self-signed certificate (PEM), named `what` in its CN: from
/// January 1st of last year, so in force from the first second whatever the time zones, and
/// for at least the five years WeChat Pay's last.
fn new_platform_pems(now: i64, what: &str) -> std::io::Result<(String, String)> {
    let key = generate_key()?;
    let cert = self_signed(
        &key,
        &format!("Tenpay.com platform certificate (wxpay simulator{what}, not for production)"),
        "wxpay simulator",
        year_of(now) - 1,
        PLATFORM_CERT_YEARS + 1,
    )?;
    Ok((key, cert))
}

impl Platform {
    /// The platform key and certificate from their PEM texts; `cert_path` and `key_path`
    /// name them in errors.
    fn from_pems(cert_pem: String, key_pem: &str, cert_path: &Path, key_path: &Path) -> std::io::Result<Platform> {
        let cert = Certificate::from_pem(&cert_pem).map_err(|e| invalid(cert_path, e))?;
        let signing = signing_key(key_path, key_pem, cert.serial_no())?;
        Ok(Platform {
            signing,
            not_before: cert.not_before(),
            not_after: cert.not_after(),
            cert_pem,
        })
    }
}

/// A new platform key and certificate, in memory only: what a rotation announces.
pub(crate) fn fresh_platform(now: i64) -> std::io::Result<Platform> {
    let (key, cert) = new_platform_pems(now, ", rotated")?;
    let memory = Path::new("(rotated platform certificate, in memory)");
    Platform::from_pems(cert, &key, memory, memory)
}

/// Reads the platform key and certificate, making them first if either file is missing.
pub(crate) fn platform(dir: &Path, now: i64) -> std::io::Result<Platform> {
    let key_path = dir.join("platform_key.pem");
    let cert_path = dir.join("platform_cert.pem");
    if !(key_path.exists() && cert_path.exists()) {
        fs::create_dir_all(dir)?;
        let (key, cert) = new_platform_pems(now, "")?;
        write_private(&key_path, &key)?;
        fs::write(&cert_path, &cert)?;
        tracing::info!(dir = %dir.display(), "made the simulator's APIv3 platform key and certificate");
    }
    Platform::from_pems(read(&cert_path)?, &read(&key_path)?, &cert_path, &key_path)
}

/// Reads the WeChat Pay public key and its id, making them first if a file is missing.
pub(crate) fn public_key(dir: &Path) -> std::io::Result<(SigningKey, V3Files)> {
    let pub_path = dir.join("pub_key.pem");
    let id_path = dir.join("pub_key_id");
    let private_path = dir.join("pub_key_private.pem");
    if !(pub_path.exists() && id_path.exists() && private_path.exists()) {
        fs::create_dir_all(dir)?;
        let key = generate_key()?;
        // Real ids are `PUB_KEY_ID_` and 34 digits.
        let digits: String = (0..34)
            .map(|_| char::from(b'0' + (crate::ids::random_u64() % 10) as u8))
            .collect();
        write_private(&private_path, &key)?;
        fs::write(&pub_path, public_pem(&key)?)?;
        fs::write(&id_path, format!("PUB_KEY_ID_{digits}\n"))?;
        tracing::info!(dir = %dir.display(), "made the simulator's WeChat Pay public key");
    }
    let id = read(&id_path)?.trim().to_owned();
    if !id.starts_with("PUB_KEY_ID_") {
        return Err(invalid(&id_path, "the id must start with PUB_KEY_ID_"));
    }
    let signing = signing_key(&private_path, &read(&private_path)?, &id)?;
    let published = PublicKey::from_pem(&read(&pub_path)?).map_err(|e| invalid(&pub_path, e))?;
    // pub_key.pem must be the public half of pub_key_private.pem, or clients would verify
    // with one key what the simulator signs with another.
    let probe = b"wxpay simulator key check";
    let signature = signing.key.sign(probe).map_err(|e| invalid(&private_path, e))?;
    let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature).map_err(io)?;
    if !published.verifies(probe, &raw) {
        return Err(invalid(&pub_path, "it is not the public half of pub_key_private.pem"));
    }
    let files = V3Files {
        dir: dir.to_owned(),
        platform_cert: dir.join("platform_cert.pem"),
        pub_key: pub_path,
        pub_key_id: id,
        pub_key_private: private_path,
    };
    Ok((signing, files))
}

/// Reads the key and certificate the simulator issued to `mch_id`, making them first if a
/// file is missing: `<dir>/<mch_id>/apiclient_key.pem`, `apiclient_cert.pem`,
/// `apiclient_serial`.
pub(crate) fn issued_merchant(dir: &Path, mch_id: &MchId, now: i64) -> std::io::Result<Certificate> {
    let d = dir.join(mch_id.as_str());
    let key_path = d.join("apiclient_key.pem");
    let cert_path = d.join("apiclient_cert.pem");
    let serial_path = d.join("apiclient_serial");
    if !(key_path.exists() && cert_path.exists() && serial_path.exists()) {
        fs::create_dir_all(&d)?;
        let key = generate_key()?;
        // WeChat Pay's merchant certificates name the merchant number as their CN.
        let cert = self_signed(&key, mch_id.as_str(), "wxpay simulator merchant", year_of(now) - 1, 6)?;
        let parsed = Certificate::from_pem(&cert).map_err(|e| invalid(&cert_path, e))?;
        write_private(&key_path, &key)?;
        fs::write(&cert_path, &cert)?;
        fs::write(&serial_path, format!("{}\n", parsed.serial_no()))?;
        tracing::info!(dir = %d.display(), "made an APIv3 key and certificate for merchant {mch_id}");
    }
    let certificate = Certificate::from_pem(&read(&cert_path)?).map_err(|e| invalid(&cert_path, e))?;
    let serial = read(&serial_path)?;
    if !serial.trim().eq_ignore_ascii_case(certificate.serial_no()) {
        return Err(invalid(&serial_path, "it is not the serial of apiclient_cert.pem"));
    }
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_and_have_no_leading_zero() {
        for _ in 0..200 {
            let s = serial_bytes();
            assert_eq!(s.len(), 16);
            assert!((0x10..0x80).contains(&s[0]), "{:02x}", s[0]);
        }
    }
}
