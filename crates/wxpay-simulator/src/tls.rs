//! TLS for the simulator, with the merchant's client certificate required on
//! `/secapi/pay/refund`, as WeChat Pay requires it.
//!
//! A test CA, a server certificate for `localhost` and `127.0.0.1`, and one client
//! certificate per merchant (`<mch_id>/apiclient_cert.pem` and `apiclient_key.pem`, the names
//! WeChat Pay gives them) are made at start, or read back when the folder already holds them
//! all. Connections may come without a certificate (every other path works without one); a
//! refund is accepted only over a connection that presented exactly the certificate issued
//! for its `mch_id`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;

use crate::{MerchantEntry, TlsFiles};

/// Who is on the other end of a TLS connection: the merchant whose certificate it showed.
#[derive(Clone, Debug)]
pub(crate) struct PeerCert {
    pub mch_id: Option<String>,
}

pub(crate) struct TlsMaterial {
    pub files: TlsFiles,
    ca: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    /// Client certificate (DER) → the merchant it was issued to.
    clients: HashMap<Vec<u8>, String>,
}

/// Where one merchant's client certificate, key and PKCS#12 file are.
struct ClientFiles {
    mch: String,
    cert: PathBuf,
    key: PathBuf,
    p12: PathBuf,
}

pub(crate) fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn read_pem_certs(path: &Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let data = fs::read(path)?;
    rustls_pemfile::certs(&mut data.as_slice()).collect()
}

impl TlsMaterial {
    pub(crate) fn load_or_create(dir: &Path, merchants: &[MerchantEntry]) -> std::io::Result<TlsMaterial> {
        let ca_path = dir.join("ca.pem");
        let server_cert = dir.join("server.pem");
        let server_key = dir.join("server.key");
        let client_paths: Vec<ClientFiles> = merchants
            .iter()
            .map(|m| {
                let d = dir.join(m.mch_id.as_str());
                ClientFiles {
                    mch: m.mch_id.as_str().to_owned(),
                    cert: d.join("apiclient_cert.pem"),
                    key: d.join("apiclient_key.pem"),
                    p12: d.join("apiclient_cert.p12"),
                }
            })
            .collect();
        let complete = [&ca_path, &server_cert, &server_key].iter().all(|p| p.exists())
            && client_paths
                .iter()
                .all(|f| f.cert.exists() && f.key.exists() && f.p12.exists());
        if !complete {
            create(dir, &ca_path, &server_cert, &server_key, &client_paths)?;
            tracing::info!(dir = %dir.display(), "made a test CA and certificates for the simulator");
        }
        let ca = read_pem_certs(&ca_path)?
            .into_iter()
            .next()
            .ok_or_else(|| io("ca.pem holds no certificate"))?;
        let server_chain = read_pem_certs(&server_cert)?;
        let server_key_pem = fs::read(&server_key)?;
        let mut clients = HashMap::new();
        let mut client_files = HashMap::new();
        let mut client_p12 = HashMap::new();
        for f in client_paths {
            for c in read_pem_certs(&f.cert)? {
                clients.insert(c.as_ref().to_vec(), f.mch.clone());
            }
            client_files.insert(f.mch.clone(), (f.cert, f.key));
            client_p12.insert(f.mch, f.p12);
        }
        Ok(TlsMaterial {
            files: TlsFiles {
                ca_cert: ca_path,
                client: client_files,
                client_p12,
            },
            ca,
            server_chain,
            server_key: server_key_pem,
            clients,
        })
    }

    pub(crate) fn server_config(&self) -> std::io::Result<Arc<rustls::ServerConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(io)?;
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .map_err(io)?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut self.server_key.as_slice())?
            .ok_or_else(|| io("server.key holds no key"))?;
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)
            .map_err(io)?;
        Ok(Arc::new(config))
    }

    fn peer(&self, certs: Option<&[CertificateDer<'_>]>) -> PeerCert {
        PeerCert {
            mch_id: certs
                .and_then(|c| c.first())
                .and_then(|c| self.clients.get(c.as_ref()).cloned()),
        }
    }
}

fn create(
    dir: &Path,
    ca_path: &Path,
    server_cert: &Path,
    server_key: &Path,
    clients: &[ClientFiles],
) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate().map_err(io)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(io)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wxpay simulator test CA (not for production)");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "wxpay simulator");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(io)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key_pair = KeyPair::generate().map_err(io)?;
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).map_err(io)?;
    server_params.distinguished_name.push(DnType::CommonName, "localhost");
    let server = server_params.signed_by(&server_key_pair, &issuer).map_err(io)?;

    fs::write(ca_path, ca_cert.pem())?;
    fs::write(server_cert, server.pem())?;
    write_private(server_key, server_key_pair.serialize_pem())?;
    for ClientFiles {
        mch,
        cert: cert_path,
        key: key_path,
        p12: p12_path,
    } in clients
    {
        let key = KeyPair::generate().map_err(io)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(io)?;
        // WeChat Pay's merchant certificates name the merchant number as their CN.
        params.distinguished_name.push(DnType::CommonName, mch.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wxpay simulator merchant");
        let cert = params.signed_by(&key, &issuer).map_err(io)?;
        if let Some(parent) = cert_path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(cert_path, cert.pem())?;
        write_private(key_path, key.serialize_pem())?;
        let p12 = pkcs12(mch, &key.serialize_der(), cert.der())?;
        write_private(p12_path, p12)?;
    }
    Ok(())
}

/// The `apiclient_cert.p12` WeChat Pay issues beside the PEM pair: the key and certificate
/// under the friendly name "Tenpay Certificate", with the merchant number as its password,
/// encrypted the legacy way (3DES, SHA-1 MAC) as the files merchants download are.
fn pkcs12(mch_id: &str, key_der: &[u8], cert_der: &[u8]) -> std::io::Result<Vec<u8>> {
    use p12_keystore::{
        Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey, PrivateKeyChain,
    };
    let key = PrivateKey::from_der(key_der).map_err(io)?;
    let cert = Certificate::from_der(cert_der).map_err(io)?;
    let local_key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
    let chain = PrivateKeyChain::new(local_key_id.as_ref().to_vec(), key, [cert]);
    let mut store = KeyStore::new();
    store.add_entry("Tenpay Certificate", KeyStoreEntry::PrivateKeyChain(chain));
    store
        .writer(mch_id)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
        .mac_algorithm(MacAlgorithm::HmacSha1)
        .write()
        .map_err(io)
}

/// Writes a private key readable by its owner only.
pub(crate) fn write_private(path: &Path, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    fs::write(path, data)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Serves `app` over TLS, within `limits`, until `shutdown` completes. The handshake counts
/// against the header timeout.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
    limits: wxpay_http::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = move |stream: tokio::net::TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            let tls = acceptor.accept(stream).await?;
            // The certificate was checked against the test CA during the handshake; which
            // merchant it belongs to is looked up per request, for the refund path to check.
            let peer = {
                let (_, conn) = tls.get_ref();
                conn.peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
            };
            let mut extensions = axum::http::Extensions::new();
            extensions.insert(PeerCertSource(peer));
            Ok((tls, extensions))
        }
    };
    if let Err(e) = wxpay_http::serve_with(listener, app, limits, shutdown, handshake).await {
        tracing::error!(error = %e, "simulator server stopped");
    }
}

/// The certificates a TLS connection presented, before they are matched to a merchant.
#[derive(Clone, Debug)]
pub(crate) struct PeerCertSource(pub Option<Vec<CertificateDer<'static>>>);

impl TlsMaterial {
    /// The merchant of the certificates a connection presented.
    pub(crate) fn identify(&self, source: &PeerCertSource) -> PeerCert {
        self.peer(source.0.as_deref())
    }
}
