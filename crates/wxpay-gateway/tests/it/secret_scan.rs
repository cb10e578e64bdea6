//! The whole-suite secret scan of the trust report (item 37). With `WXPAY_SECRET_SCAN`
//! naming a folder, a test binary logs what it runs at TRACE into that folder, keeps there
//! what else it must not leak (metrics, databases), and lists the secrets it handed out in
//! `<package>-<pid>.secrets.jsonl`; `scripts/secret-scan` then searches every file for every
//! secret. Without the variable nothing of this runs. Shared by the gateway's and the
//! command's test binaries (the command's includes this file).

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The folder of the scan, when this run is one.
pub(crate) fn dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(std::env::var_os("WXPAY_SECRET_SCAN")?);
        std::fs::create_dir_all(dir.join("db")).expect("the scan's folder is made");
        Some(dir)
    })
    .as_deref()
}

/// A file of the scan's folder, named after this process, opened for appending.
fn file(suffix: &str) -> Option<std::fs::File> {
    let path = dir()?.join(format!("{}-{}{suffix}", env!("CARGO_PKG_NAME"), std::process::id()));
    Some(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("a file of the scan opens"),
    )
}

/// Where the TRACE records go: one file shared by every thread. Each record is formatted
/// whole and then written with one `write` to a file opened for appending, so records of
/// threads logging at once do not interleave.
pub(crate) fn log_file() -> Option<&'static std::fs::File> {
    static FILE: OnceLock<Option<std::fs::File>> = OnceLock::new();
    FILE.get_or_init(|| file(".log")).as_ref()
}

/// The layer that writes every record, TRACE and up, into the scan's log file: `None` when
/// this run is not a scan.
pub(crate) fn trace_layer<S>() -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    log_file().map(|file| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || file)
            .with_filter(tracing_subscriber::filter::LevelFilter::TRACE)
    })
}

/// Makes the scan's layer this process's only subscriber, once (for a test binary that has no
/// subscriber of its own): from then on what runs in the process logs into the scan.
// The CLI's test binary calls it; the gateway's installs a subscriber of its own.
#[allow(dead_code)]
pub(crate) fn install_trace_subscriber() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let _ = tracing_subscriber::registry().with(trace_layer()).try_init();
    });
}

/// Records that something the scan should search could not be kept (`what`, and why): the
/// scan then fails rather than pass on less than it says.
pub(crate) fn missed(what: &str, why: &str) {
    keep(".missed", &format!("{what}: {why}\n"));
}

/// What a console session cookie is listed as; `scripts/secret-scan` counts them by it.
// The gateway's test binary lists them (console.rs); the command's includes this file too.
#[allow(dead_code)]
pub(crate) const CONSOLE_SESSION: &str = "a console session cookie";

/// Lists `value` as a secret the scan must not find anywhere. Test-only values, written in
/// the clear to the scan's own folder so that the search knows what to search for.
pub(crate) fn secret(what: &str, value: &str) {
    static LISTED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    if dir().is_none() {
        return;
    }
    let mut listed = LISTED.lock().unwrap();
    if listed.get_or_insert_with(HashSet::new).insert(value.to_owned()) {
        let line = serde_json::json!({ "what": what, "value": value });
        keep(".secrets.jsonl", &format!("{line}\n"));
    }
}

/// Lists a line of the base64 body of every private key below `dir`: long enough never to
/// occur by chance, and what a key printed without its PEM armour would show.
pub(crate) fn list_private_keys(dir: &Path) {
    if self::dir().is_none() {
        return;
    }
    for path in walk(dir) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("PRIVATE KEY") {
            // A line from the middle: the first ones of PKCS#8 keys differ only at their end.
            let body: Vec<&str> = text.lines().filter(|l| !l.starts_with("-----")).collect();
            if let Some(line) = body.get(body.len() / 2) {
                secret(&format!("the private key {}", path.display()), line);
            }
        }
    }
}

/// Every file below `dir`.
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Appends `text` (a gateway's metrics, say) to this process's `<suffix>` file of the scan.
pub(crate) fn keep(suffix: &str, text: &str) {
    if let Some(mut out) = file(suffix) {
        out.write_all(text.as_bytes()).expect("a text is kept for the scan");
    }
}

/// Keeps the bytes of a SQLite database (the file and its write-ahead log): every row, and
/// what deleted rows left in free pages.
pub(crate) fn sqlite_database(file: &Path) {
    let Some(dir) = dir() else { return };
    let name = file.parent().and_then(|p| p.file_name()).unwrap_or_default();
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", file.display()));
        if from.exists() {
            let to = dir
                .join("db")
                .join(format!("{}.sqlite{suffix}", name.to_string_lossy()));
            std::fs::copy(&from, to).expect("the database is kept for the scan");
        }
    }
}
