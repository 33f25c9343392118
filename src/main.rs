//! `supervisor`: the prefork HTTP server. Wires the `app` crate into the `supervisor` crate.
//!
//! Exit codes (the whole policy is here):
//! - 0: stopped cleanly (or `check`/`migrate`/`healthcheck` succeeded);
//! - 1: runtime failure (cannot bind, migration failed, health check failed);
//! - 2: bad configuration or usage, before anything was started;
//! - 3: no worker could boot at startup.
#![forbid(unsafe_code)]

mod config;
mod healthcheck;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Layers};

/// A prefork HTTP application server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

/// Settings that can be given on the command line (they beat the environment and the file).
#[derive(clap::Args, Debug, Default)]
struct Flags {
    /// Config file (TOML).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (repeat or comma-separate for several).
    #[arg(long, global = true)]
    bind: Vec<String>,
    /// Listen backlog.
    #[arg(long, global = true)]
    backlog: Option<String>,
    /// Number of worker processes (0: serve in a single process, no master).
    #[arg(long, short, global = true)]
    workers: Option<String>,
    /// Runtime threads per worker.
    #[arg(long, global = true)]
    threads: Option<String>,
    /// Seconds of heartbeat silence before a worker is killed.
    #[arg(long, short, global = true)]
    timeout: Option<String>,
    /// Seconds granted to in-flight requests on a graceful stop.
    #[arg(long, global = true)]
    graceful_timeout: Option<String>,
    /// Seconds an idle keep-alive connection is kept open (0 disables keep-alive).
    #[arg(long, global = true)]
    keepalive: Option<String>,
    /// trace, debug, info, warning, error.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Seconds a new worker has to become ready.
    #[arg(long, global = true)]
    boot_timeout: Option<String>,
    /// Recycle a worker after this many requests (0: never).
    #[arg(long, global = true)]
    max_requests: Option<String>,
    /// Random extra requests per worker before recycling.
    #[arg(long, global = true)]
    max_requests_jitter: Option<String>,
    /// Write the master's pid to this file.
    #[arg(long, global = true)]
    pidfile: Option<String>,
    /// Log to this file instead of standard output (reopened on SIGUSR1).
    #[arg(long, global = true)]
    log_file: Option<String>,
}

impl Flags {
    fn to_map(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        if !self.bind.is_empty() {
            m.insert("--bind", self.bind.join(","));
        }
        let single = [
            ("--backlog", &self.backlog),
            ("--workers", &self.workers),
            ("--threads", &self.threads),
            ("--timeout", &self.timeout),
            ("--graceful-timeout", &self.graceful_timeout),
            ("--keepalive", &self.keepalive),
            ("--log-level", &self.log_level),
            ("--boot-timeout", &self.boot_timeout),
            ("--max-requests", &self.max_requests),
            ("--max-requests-jitter", &self.max_requests_jitter),
            ("--pidfile", &self.pidfile),
            ("--log-file", &self.log_file),
        ];
        for (name, value) in single {
            if let Some(v) = value {
                m.insert(name, v.clone());
            }
        }
        m
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the configuration and print the effective settings with their sources.
    Check,
    /// Apply the embedded database migrations.
    Migrate,
    /// Exit 0 if GET URL answers 2xx (for container health checks).
    Healthcheck {
        /// URL to probe.
        #[arg(default_value = "http://127.0.0.1:8000/healthz")]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let code = if error.is::<ConfigError>() { 2 } else { 1 };
            eprintln!("supervisor: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Some(Command::Healthcheck { url }) = &cli.command {
        return Ok(healthcheck::probe(url));
    }
    let config = load(&cli.flags)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            for (key, value, source) in &config.report {
                println!("{key} = {value}    # {source}");
            }
            if let Some(warning) = app::pool_budget_warning(&config.app, config.supervisor.workers) {
                println!("# warning: {warning}");
            }
            Ok(0)
        }
        Command::Migrate => {
            supervisor::logging::init(config.log_level, None)?;
            let runtime = tokio_runtime()?;
            match runtime.block_on(app::migrate(&config.app)) {
                Ok(report) => {
                    tracing::info!(report = %report, "migrations done");
                    Ok(0)
                }
                Err(error) => {
                    tracing::error!(error = %error, "migrations failed");
                    Ok(1)
                }
            }
        }
        Command::Serve => serve(config, cli.flags),
        Command::Healthcheck { .. } => unreachable!("handled above"),
    }
}

fn load(flags: &Flags) -> Result<Config, ConfigError> {
    let layers = Layers::new(flags.config.as_deref(), |name| std::env::var(name).ok(), flags.to_map())?;
    layers.resolve(supervisor::cpus::usable_cpus())
}

fn serve(config: Config, flags: Flags) -> anyhow::Result<u8> {
    supervisor::logging::init(config.log_level, config.log_file.as_deref())?;
    // A panic is logged as one JSON line (with the request id when it happens in a request), instead of
    // Rust's plain-text message on stderr.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = flags.config.as_ref().map(|p| p.display().to_string()),
        settings = %config.summary(),
        "effective settings"
    );
    if let Some(warning) = app::pool_budget_warning(&config.app, config.supervisor.workers) {
        tracing::warn!(warning = %warning, "database connection budget");
    }
    // Allocated once, before any worker exists: every worker and every generation count into it.
    let metrics = app::Metrics::shared()?;
    let app: Arc<dyn supervisor::WorkerApp> = Arc::new(app::App::with_metrics(config.app.clone(), metrics));
    if config.single_process {
        return Ok(supervisor::serve_in_process(&config.supervisor, app)? as u8);
    }
    let reloader: supervisor::Reloader = Box::new(move || {
        let config = load(&flags).map_err(|e| e.to_string())?;
        tracing::info!(settings = %config.summary(), "reloaded settings");
        let app: Arc<dyn supervisor::WorkerApp> = Arc::new(app::App::with_metrics(config.app, metrics));
        Ok((config.supervisor, app))
    });
    Ok(supervisor::run(config.supervisor, app, reloader)? as u8)
}

/// A runtime for one-shot async work in this process (migrations). Never used by `serve`: the master
/// must not start a runtime before it forks.
fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
