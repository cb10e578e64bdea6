//! `wxpay console …`: what the operator console needs from the command line.

use std::io::{BufRead, IsTerminal};

use clap::{Args, Subcommand};

use crate::CliError;

/// `wxpay console`.
#[derive(Debug, Args)]
pub(crate) struct ConsoleArgs {
    #[command(subcommand)]
    command: ConsoleCommand,
}

#[derive(Debug, Subcommand)]
enum ConsoleCommand {
    /// Hash a console password for `[console] password_hash`.
    ///
    /// Reads the password from the first line of standard input and prints its Argon2id hash
    /// (a PHC string, `$argon2id$…`). Only the hash goes into the configuration file.
    #[command(
        after_help = "Example (the password is not echoed nor kept in the shell history):\n  read -rs P && printf '%s\\n' \"$P\" | wxpay console hash-password"
    )]
    HashPassword,
}

/// Runs `wxpay console …`.
pub(crate) fn run(args: ConsoleArgs) -> Result<(), CliError> {
    match args.command {
        ConsoleCommand::HashPassword => hash_password(&mut std::io::stdin().lock()),
    }
}

fn hash_password(input: &mut impl BufRead) -> Result<(), CliError> {
    if std::io::stdin().is_terminal() {
        eprintln!("type the password and press Enter (it shows as you type; pipe it in to hide it):");
    }
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("cannot read the password from standard input: {e}")))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    println!("{}", hash(password)?);
    Ok(())
}

/// The hash of `password` with a fresh random salt.
pub(crate) fn hash(password: &str) -> Result<String, CliError> {
    if password.chars().count() < 12 {
        return Err(CliError::Usage(
            "the console password needs at least 12 characters".into(),
        ));
    }
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| CliError::Usage("the system random source failed".into()))?;
    wxpay_gateway::ConsoleConfig::hash_password(password, &salt).map_err(CliError::Usage)
}
