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
mod settings;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Config, ConfigError, Layers};

/// A prefork HTTP application server. Flags beat the environment, which beats the config file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

/// The CLI: the subcommands and `--config` above, plus one flag per declared setting that has one.
fn cli() -> clap::Command {
    settings::SETTINGS.iter().fold(Cli::command(), |cmd, s| match s.flag {
        None => cmd,
        Some(flag) => {
            let arg = clap::Arg::new(s.key).long(flag).global(true).value_name("VALUE").help(s.doc);
            let arg = if let Some(short) = s.short { arg.short(short) } else { arg };
            let arg = if let Some((_, alias)) = s.alias { arg.visible_alias(alias) } else { arg };
            // A list flag may be repeated (`--bind a --bind b`) as well as comma-separated.
            cmd.arg(if s.kind == settings::Kind::List { arg.action(clap::ArgAction::Append) } else { arg })
        }
    })
}

/// The setting flags given on the command line, by setting key.
fn flag_values(matches: &clap::ArgMatches) -> BTreeMap<&'static str, String> {
    (settings::SETTINGS.iter().filter(|s| s.flag.is_some()))
        .filter_map(|s| {
            let values: Vec<String> = matches.get_many::<String>(s.key)?.cloned().collect();
            Some((s.key, values.join(",")))
        })
        .collect()
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
    let matches = cli().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = run(cli, flag_values(&matches));
    supervisor::logging::flush_before_exit();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let code = if error.is::<ConfigError>() { 2 } else { 1 };
            eprintln!("supervisor: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli, flags: BTreeMap<&'static str, String>) -> anyhow::Result<u8> {
    if let Some(Command::Healthcheck { url }) = &cli.command {
        return Ok(healthcheck::probe(url));
    }
    let flags = Flags { config: cli.config, values: flags };
    let config = load(&flags)?;
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
            supervisor::logging::init(&supervisor::logging::LogSettings { file: None, ..config.log.clone() })?;
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
        Command::Serve => serve(config, flags),
        Command::Healthcheck { .. } => unreachable!("handled above"),
    }
}

/// What the command line says about the configuration: the file, and the setting flags by key.
struct Flags {
    config: Option<PathBuf>,
    values: BTreeMap<&'static str, String>,
}

fn load(flags: &Flags) -> Result<Config, ConfigError> {
    let layers = Layers::new(flags.config.as_deref(), |name| std::env::var(name).ok(), flags.values.clone())?;
    layers.resolve(supervisor::cpus::usable_cpus())
}

fn serve(config: Config, flags: Flags) -> anyhow::Result<u8> {
    supervisor::logging::init(&config.log)?;
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
    let settings = config.supervisor.clone();
    let running = config;
    let reloader: supervisor::Reloader = Box::new(move || {
        let config = load(&flags).map_err(|e| e.to_string())?;
        tracing::info!(settings = %config.summary(), "reloaded settings");
        let ignored = running.needs_restart(&config);
        if !ignored.is_empty() {
            tracing::warn!(keys = %ignored.join(", "), "changed settings that only a restart applies: ignored");
        }
        let app: Arc<dyn supervisor::WorkerApp> = Arc::new(app::App::with_metrics(config.app, metrics));
        Ok((config.supervisor, app))
    });
    Ok(supervisor::run(settings, app, reloader)? as u8)
}

/// A runtime for one-shot async work in this process (migrations). Never used by `serve`: the master
/// must not start a runtime before it forks.
fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
