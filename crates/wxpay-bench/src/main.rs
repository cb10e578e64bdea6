//! `wxpay-bench`: a closed-loop load generator for the simulator, the gateway, and the peer
//! service a merchant would run instead (`../shared/bench`), with the same connections,
//! requests and arithmetic for each, so that their figures compare.
//!
//! Each of `--connections` tasks keeps one HTTP/1.1 keep-alive connection and sends its next
//! request as soon as the previous answer is in, like `wrk`. Every request is a freshly
//! signed `unifiedorder` with its own `out_trade_no`, so each one creates an order. Latencies
//! are kept exactly (not bucketed) and sorted at the end; the target's resident memory is
//! read from `/proc` when its pid is given.
//!
//! ```text
//! cargo run --release -p wxpay-bench -- simulator --target http://127.0.0.1:8090 --pid $(pgrep -f 'wxpay simulator')
//! ```

/// Prints a line, and stops quietly when the reader went away (`… | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod gateway;
mod load;
mod process;
mod reconcile;
mod simulator;
mod soak;
mod workload;

use clap::{Parser, Subcommand};

use crate::gateway::{GatewayArgs, gateway};
use crate::simulator::{SimArgs, simulator};

#[derive(Debug, Parser)]
#[command(name = "wxpay-bench", about = "Load runs for the wxpay simulator and gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// `unifiedorder` against a WeChat Pay simulator (the built-in test merchant).
    Simulator(SimArgs),
    /// Order creation and first-delivery payment notifications against the wxpay gateway,
    /// or against the peer service of `../shared/bench` with `--api peer`.
    Gateway(GatewayArgs),
    /// Reconciling a generated day of 100,000 bill rows against a seeded database.
    Reconcile(reconcile::ReconcileArgs),
    /// Mixed traffic at a steady rate (orders, payments, duplicates, refunds, junk), every
    /// acknowledged write checked at the end: the soak and the fault runs.
    Soak(soak::SoakArgs),
}

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Simulator(a) => a.threads,
        Command::Gateway(a) => a.threads,
        Command::Reconcile(a) => a.threads,
        Command::Soak(a) => a.threads,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = match cli.command {
        Command::Simulator(args) => runtime.block_on(simulator(args)),
        Command::Gateway(args) => runtime.block_on(gateway(args)),
        Command::Reconcile(args) => runtime.block_on(reconcile::run(args)),
        Command::Soak(args) => runtime.block_on(soak::soak(args)),
    };
    if let Err(e) = result {
        eprintln!("wxpay-bench: {e}");
        std::process::exit(1);
    }
}
