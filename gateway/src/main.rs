use std::io::Read;
use std::process::ExitCode;

use common::env::Env;
use gateway::config::{Config, SecretKey};

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => run(),
        Some("--health-check") => health_check(),
        Some("hash-password") => hash_password(),
        Some(_) => {
            eprintln!("usage: gateway [--health-check | hash-password]");
            ExitCode::from(2)
        }
    }
}

fn run() -> ExitCode {
    common::server::init_logging();
    let config = match Config::from_env(&Env::process()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gateway: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    if let SecretKey::Generated(_) = config.secret {
        log::warn!(
            "SECRET_KEY is not set: using a random key, so sessions will not survive a restart \
             and replicas will not accept each other's tokens"
        );
    }
    let workers = match common::server::worker_threads(&Env::process()) {
        Ok(workers) => workers,
        Err(error) => {
            eprintln!("gateway: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match common::server::runtime(workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = match common::server::shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(error) => {
                eprintln!("gateway: cannot listen for signals: {error}");
                return ExitCode::FAILURE;
            }
        };
        match gateway::serve(config, shutdown).await {
            Ok((addr, server)) => {
                log::info!("gateway listening on http://{addr}");
                server.await;
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("gateway: {error}");
                ExitCode::from(2)
            }
        }
    })
}

fn health_check() -> ExitCode {
    match Env::process().parse_or("PORT", 5000u16) {
        Ok(port) => common::server::health_check(port),
        Err(_) => ExitCode::FAILURE,
    }
}

/// Reads a password from stdin, never from the command line where `ps` would show it, and prints
/// its Argon2id hash for a `USERS_FILE` line.
fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("gateway hash-password: cannot read stdin: {error}");
        return ExitCode::FAILURE;
    }
    let password = input.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!(
            "gateway hash-password: give the password on stdin, e.g. `gateway hash-password < file`"
        );
        return ExitCode::from(2);
    }
    match gateway::users::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("gateway hash-password: {error}");
            ExitCode::FAILURE
        }
    }
}
