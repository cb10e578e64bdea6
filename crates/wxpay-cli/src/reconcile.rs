//! `wxpay reconcile`: a day's bill against the database, as a table for people (with
//! progress bars on a terminal) or as JSON for programs.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use wxpay_gateway::reconcile::{Day, Progress, Quiet, Report, keep, reconcile};
use wxpay_protocol::Fen;

use crate::CliError;

#[derive(Debug, Args)]
pub(crate) struct ReconcileArgs {
    /// The configuration file (TOML); every key can be overridden by a WXPAY_… variable.
    #[arg(long, value_name = "FILE", env = "WXPAY_CONFIG")]
    config: PathBuf,
    /// The day to reconcile, Beijing time (WeChat Pay makes a day's bill from 09:00 the
    /// next day).
    #[arg(long, value_name = "YYYY-MM-DD")]
    date: String,
    /// Only this merchant (a [[merchants]] name); all of them by default.
    #[arg(long, value_name = "NAME")]
    merchant: Option<String>,
    /// Settle each difference through orderquery/refundquery and record it in the orders'
    /// history.
    #[arg(long)]
    repair: bool,
    /// `table` for people, `json` (one document on standard output, nothing else) for programs.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// A download's bar against its length.
fn bytes_bar() -> ProgressStyle {
    ProgressStyle::with_template("{msg:<40} [{bar:30}] {bytes}/{total_bytes} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A download of unknown length: the bytes so far.
fn bytes_spinner() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg:<40} {bytes} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Shows `bytes` of a download on `b`: against `total` when the answer gave one. A download
/// asked for again (the bill as text after WeChat Pay failed to compress it) may give none,
/// and then the bar forgets the first answer's length rather than show more than 100 %.
fn show_download(b: &ProgressBar, bytes: u64, total: Option<u64>) {
    match total {
        Some(t) if b.length() != Some(t) => {
            b.set_length(t);
            b.set_style(bytes_bar());
        }
        None if b.length().is_some_and(|l| bytes > l) => {
            b.unset_length();
            b.set_style(bytes_spinner());
        }
        _ => {}
    }
    b.set_position(bytes);
}

/// Progress bars on standard error.
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn stage(&self, name: &str, total: Option<u64>) {
        let bar = match total {
            Some(n) => {
                let b = ProgressBar::new(n);
                b.set_style(
                    ProgressStyle::with_template("{msg:<40} [{bar:30}] {pos}/{len} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b
            }
            None => {
                let b = ProgressBar::new_spinner();
                b.set_style(bytes_spinner());
                b.enable_steady_tick(Duration::from_millis(100));
                b
            }
        };
        bar.set_message(name.to_owned());
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            b.inc(n);
        }
    }

    fn downloaded(&self, bytes: u64, total: Option<u64>) {
        if let Some(b) = &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            show_download(b, bytes, total);
        }
    }

    fn done(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if let Some(len) = b.length() {
                b.set_position(len);
            }
            b.finish();
        }
    }
}

/// Yuan of a total in fen (totals are sums of amounts: never negative).
fn fen(v: i64) -> String {
    Fen::new(v.unsigned_abs()).map_or_else(|_| v.to_string(), Fen::to_yuan)
}

/// The report as a table.
fn table(r: &Report, repair: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "merchant {} · {} (Beijing time)", r.merchant, r.date);
    let _ = writeln!(
        out,
        "{:<10} {:>9} {:>16} {:>8} {:>16}",
        "", "payments", "yuan", "refunds", "yuan"
    );
    for (name, t) in [("bill", &r.bill), ("database", &r.local)] {
        let _ = writeln!(
            out,
            "{name:<10} {:>9} {:>16} {:>8} {:>16}",
            t.payments,
            fen(t.payments_fen),
            t.refunds,
            fen(t.refunds_fen)
        );
    }
    if r.found.is_empty() {
        let _ = writeln!(out, "no differences");
    } else {
        let _ = writeln!(out, "{} difference(s):", r.found.len());
        for d in &r.found {
            let _ = writeln!(
                out,
                "  {:<16} {:<8} {:<32} bill: {}  database: {}",
                format!("{:?}", d.kind).to_lowercase(),
                d.record,
                d.out_refund_no.as_deref().unwrap_or(&d.out_trade_no),
                d.upstream.as_deref().unwrap_or("-"),
                d.local.as_deref().unwrap_or("-"),
            );
        }
    }
    for rep in &r.repairs {
        let d = &rep.difference;
        let _ = writeln!(
            out,
            "  repair {:<10} {:<32} {}: {}",
            rep.result,
            d.out_refund_no.as_deref().unwrap_or(&d.out_trade_no),
            rep.checked_with,
            rep.detail
        );
    }
    if r.balanced {
        let _ = writeln!(
            out,
            "BALANCED{}",
            if repair && !r.found.is_empty() {
                " after repair"
            } else {
                ""
            }
        );
    } else {
        let _ = writeln!(
            out,
            "NOT BALANCED: {} difference(s) left{}",
            r.remaining.len(),
            if repair {
                ""
            } else {
                " (run with --repair to settle them)"
            }
        );
    }
    out
}

pub(crate) fn run(args: ReconcileArgs) -> Result<(), CliError> {
    let _log = crate::init_logging_at(crate::LogFormat::Pretty, "warn");
    let (cfg, settings) = crate::serve::load_gateway(&args.config)?;
    let day = Day::parse(&args.date).map_err(|e| CliError::Usage(e.to_string()))?;
    let names: Vec<String> = match &args.merchant {
        Some(m) => {
            if !cfg.merchants.iter().any(|c| &c.name == m) {
                return Err(CliError::Usage(format!(
                    "--merchant {m:?}: no such merchant in {}",
                    args.config.display()
                )));
            }
            vec![m.clone()]
        }
        None => cfg.merchants.iter().map(|m| m.name.clone()).collect(),
    };
    let show_bars = args.format == Format::Table && std::io::stderr().is_terminal();
    let runtime = crate::serve::runtime()?;
    // Every merchant is reconciled even when one fails (its bill not made yet, say); the
    // failures are reported after the reports.
    let (reports, errors) = runtime.block_on(async {
        let app = crate::serve::open_app(&args.config, cfg, &settings.database_url, settings.pool_size.min(4)).await?;
        let mut reports = Vec::new();
        let mut errors = Vec::new();
        for name in &names {
            let started = app.now();
            let bars = Bars { bar: Mutex::new(None) };
            let progress: &dyn Progress = if show_bars { &bars } else { &Quiet };
            match reconcile(&app, Some(name), &day, args.repair, progress).await {
                Ok(report) => {
                    keep(&app, &report, "command", started)
                        .await
                        .map_err(|e| CliError::Usage(e.to_string()))?;
                    reports.push(report);
                }
                Err(e) => {
                    bars.done();
                    errors.push(format!("merchant {name}: {e}"));
                }
            }
        }
        Ok::<_, CliError>((reports, errors))
    })?;
    let balanced = errors.is_empty() && reports.iter().all(|r| r.balanced);
    match args.format {
        Format::Json => {
            let doc =
                serde_json::json!({ "date": day.date, "balanced": balanced, "reports": reports, "errors": errors });
            println!("{doc}");
        }
        Format::Table => {
            for r in &reports {
                print!("{}", table(r, args.repair));
            }
        }
    }
    if !errors.is_empty() {
        return Err(CliError::Usage(errors.join("; ")));
    }
    if balanced { Ok(()) } else { Err(CliError::Failed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_asked_for_again_without_a_length_never_shows_more_than_its_total() {
        let b = ProgressBar::hidden();
        // The first answer: WeChat Pay's short XML refusal, with its length.
        show_download(&b, 150, Some(150));
        assert_eq!(b.length(), Some(150));
        // The bill as text, sent without a length: the old one is forgotten.
        show_download(&b, 4096, None);
        assert_eq!((b.length(), b.position()), (None, 4096));
        // An answer that gives its length is shown against it.
        show_download(&b, 10, Some(2048));
        assert_eq!((b.length(), b.position()), (Some(2048), 10));
        show_download(&b, 20, None);
        assert_eq!((b.length(), b.position()), (Some(2048), 20));
    }
}
