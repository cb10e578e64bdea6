//! What the simulator is told at start: its merchants, its mode, its clock speed and bounds.
//! Built by the CLI (from flags and a TOML file) or directly by tests.

use std::path::PathBuf;
use std::time::Duration;

use wxpay_protocol::v3::Certificate;
use wxpay_protocol::{ApiKey, ApiV3Key, AppId, AppSecret, MchId};

/// One mini program of a merchant, as the simulator knows it.
#[derive(Clone, Debug)]
pub struct SimMerchant {
    /// The mini program's AppID.
    pub appid: AppId,
    /// Its AppSecret, checked by `jscode2session`.
    pub app_secret: AppSecret,
    /// The merchant number; several entries may share it (one merchant, several apps).
    pub mch_id: MchId,
    /// The merchant's APIv2 key; entries sharing a `mch_id` must share it too. Without one,
    /// the merchant is served on APIv3 only.
    pub api_key: Option<ApiKey>,
    /// The merchant's APIv3 credentials; with them (and [`SimConfig::v3`] set), the merchant is
    /// served on APIv3 too.
    pub v3: Option<SimV3Merchant>,
}

/// What the simulator knows of a merchant on APIv3.
#[derive(Clone, Debug)]
pub struct SimV3Merchant {
    /// The APIv3 key, which encrypts notification resources and `/v3/certificates`.
    pub apiv3_key: ApiV3Key,
    /// The merchant API certificate, whose key checks `Authorization` and whose serial
    /// `serial_no` must name. `None`: a key and certificate are made at first start under
    /// `<keys_dir>/<mch_id>/` (the built-in test merchant).
    pub certificate: Option<Certificate>,
}

impl SimMerchant {
    /// The built-in test merchant: public, test-only credentials, documented in the README.
    pub fn test_merchant() -> SimMerchant {
        SimMerchant {
            appid: AppId::new(TEST_APPID).expect("valid test appid"),
            app_secret: AppSecret::new(TEST_APP_SECRET).expect("valid test secret"),
            mch_id: MchId::new(TEST_MCH_ID).expect("valid test mch_id"),
            api_key: Some(ApiKey::new(TEST_API_KEY).expect("valid test key")),
            v3: Some(SimV3Merchant {
                apiv3_key: ApiV3Key::new(TEST_APIV3_KEY).expect("valid test APIv3 key"),
                certificate: None,
            }),
        }
    }
}

/// The built-in test merchant's AppID (the example of WeChat Pay's documentation).
pub const TEST_APPID: &str = "wxd678efh567hg6787";
/// The built-in test merchant's number (the example of WeChat Pay's documentation).
pub const TEST_MCH_ID: &str = "1230000109";
/// The built-in test merchant's APIv2 key. Test only: it is public.
pub const TEST_API_KEY: &str = "wxpaySimulatorTestKey0000000000A";
/// The built-in test merchant's APIv3 key. Test only: it is public.
pub const TEST_APIV3_KEY: &str = "wxpaySimulatorApiV3TestKey000001";
/// The built-in test mini program's AppSecret. Test only: it is public.
pub const TEST_APP_SECRET: &str = "wxpaysimulatortestappsecret00000";

/// When orders get paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every new order is paid after `auto_pay_delay` (divided by the time scale), and its
    /// notification sent; for load runs and demos.
    Auto,
    /// Orders are paid only when someone asks (`POST /simulator/pay`, the checkout page);
    /// for tests.
    Explicit,
}

/// TLS for the simulator, with the merchant client certificate required on `/secapi/…`.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Where the test CA, the server certificate and one client certificate per merchant
    /// are written (or read, when they exist): `ca.pem`, `server.pem`, `server.key`,
    /// `<mch_id>/apiclient_cert.pem`, `<mch_id>/apiclient_key.pem`.
    pub dir: PathBuf,
}

/// What signs APIv3 answers and notifications, and so what `Wechatpay-Serial` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V3Signer {
    /// The WeChat Pay public key (`PUB_KEY_ID_…`), as for merchants onboarded since late 2024.
    PublicKey,
    /// The platform certificate (its serial in upper-case hex).
    Certificate,
}

/// APIv3: where WeChat Pay's keys are, and which one signs.
#[derive(Clone, Debug)]
pub struct V3Config {
    /// Where the platform key and certificate, the WeChat Pay public key, and the built-in
    /// merchant's key and certificate are made at first start and read later:
    /// `platform_key.pem`, `platform_cert.pem`, `pub_key.pem`, `pub_key_id`,
    /// `pub_key_private.pem`, `<mch_id>/apiclient_key.pem`, `<mch_id>/apiclient_cert.pem`,
    /// `<mch_id>/apiclient_serial`.
    pub keys_dir: PathBuf,
    /// What signs answers and notifications.
    pub signer: V3Signer,
}

/// The simulator's configuration.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The merchants served; at least one.
    pub merchants: Vec<SimMerchant>,
    /// When orders get paid.
    pub mode: Mode,
    /// Every delay (auto payment, refund completion, notification retries) is divided by
    /// this; 1 is real time.
    pub time_scale: f64,
    /// How long after `unifiedorder` an order is paid in [`Mode::Auto`].
    pub auto_pay_delay: Duration,
    /// How long after `refund` a refund completes.
    pub refund_delay: Duration,
    /// Past this many orders, the oldest finished ones (closed, failed, or paid with their
    /// notification delivered and refunds settled) are forgotten, to bound memory.
    pub max_orders: usize,
    /// How many notification attempts `/simulator/notifications` keeps.
    pub notification_log: usize,
    /// How many notifications are in flight at once.
    pub notify_concurrency: usize,
    /// Timeout of one notification attempt (WeChat Pay gives up after a few seconds).
    pub notify_timeout: Duration,
    /// Bills of the current day are served at once instead of `Bill Creating` until 10:00
    /// the next day; reconciliation tests want this.
    pub bills_immediately: bool,
    /// TLS with client certificates, or plain HTTP.
    pub tls: Option<TlsConfig>,
    /// APIv3, for the merchants that have v3 credentials; off when `None`.
    pub v3: Option<V3Config>,
    /// What clients may take of the server: header, body and idle timeouts, connections.
    pub limits: wxpay_http::Limits,
    /// Openids accepted for every mini program besides those the simulator issues through
    /// `jscode2session` (see [`crate::openid`]): the fixed openids a team's own fixtures
    /// already use. Any other openid is refused, as WeChat Pay refuses an openid of another
    /// app.
    pub openids: Vec<String>,
    /// The least time between two refunds of one order (WeChat Pay: a minute); a second
    /// refund sooner is refused with `FREQUENCY_LIMITED`, one within a second of the last with
    /// `BIZERR_NEED_RETRY`. Measured on the simulated timeline: divided by `time_scale` in
    /// real time, and cleared by moving the clock on (`POST /simulator/clock`).
    pub refund_interval: Duration,
}

impl SimConfig {
    /// The built-in test merchant, explicit mode, real time.
    pub fn new() -> SimConfig {
        SimConfig {
            merchants: vec![SimMerchant::test_merchant()],
            mode: Mode::Explicit,
            time_scale: 1.0,
            auto_pay_delay: Duration::from_secs(2),
            refund_delay: Duration::from_secs(5),
            max_orders: 2_000_000,
            notification_log: 10_000,
            notify_concurrency: 256,
            notify_timeout: Duration::from_secs(5),
            bills_immediately: false,
            tls: None,
            v3: None,
            limits: wxpay_http::Limits::default(),
            openids: Vec::new(),
            refund_interval: Duration::from_secs(60),
        }
    }

    /// `d` divided by the time scale.
    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        d.div_f64(self.time_scale.max(f64::MIN_POSITIVE))
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::new()
    }
}
