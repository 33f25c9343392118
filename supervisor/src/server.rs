//! [`Server`]: the entry point that runs a service under the supervisor, with the whole command line.
//!
//! `main` parses the command line (the subcommands, `--config`, one flag per declared setting), resolves
//! the settings (flag > environment > file > default), and then serves, checks the configuration, probes a
//! URL, talks to the running server (`ctl`), or runs one of the application's own commands. The exit-code
//! policy is here, in one place:
//!
//! - 0: stopped cleanly, or a one-shot command succeeded;
//! - 1: a runtime failure (an address cannot be bound, a command or a health check failed, the running
//!   server refused or failed a `ctl` command);
//! - 2: bad configuration or usage, before anything was started;
//! - 3: no worker could boot at startup.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, Layers, Resolver};
use crate::server_settings::{AppSettings, Resolved, sections, specs};
use crate::service::{BoxError, Connections, Label, Request};
use crate::worker::{Boot, Hooks, Worker};
use crate::{BootError, Settings};

/// Exit code: stopped cleanly, or a one-shot command succeeded.
const EXIT_OK: u8 = 0;
/// Exit code: a runtime failure.
const EXIT_FAILURE: u8 = 1;
/// Exit code: bad configuration or usage.
const EXIT_CONFIG: u8 = 2;
/// How long `ctl --wait` waits for an outcome unless told (`--timeout`).
const CTL_WAIT: f64 = 300.0;
/// The settings `ctl` reads: those that locate the control socket.
const CTL_SETTINGS: [&str; 3] = ["bind", "pidfile", "control_socket"];

/// A service run under the supervisor: a master that binds the listeners and forks workers, each of which
/// builds the service with the boot function and serves it. See the crate documentation for an example.
///
/// The boot function runs in every worker, after fork, on the worker's tokio runtime (once per worker, and
/// again in every worker of a new generation after a reload). Everything that starts threads, opens
/// connections or touches tokio belongs there, never before [`Server::main`]: the master forks, and a
/// process that forks must not have started a runtime.
pub struct Server<C: AppSettings = ()> {
    launch: Arc<dyn Fn(C, Hooks) -> Arc<dyn Boot> + Send + Sync>,
    hooks: Hooks,
    name: Option<String>,
    about: Option<String>,
    version: String,
    commands: Vec<AppCommand<C>>,
}

/// A one-shot command of the application's, run with the resolved settings.
struct AppCommand<C> {
    name: &'static str,
    about: &'static str,
    run: CommandFn<C>,
}

/// What an [`AppCommand`] runs.
type CommandFn<C> = Box<dyn Fn(&Settings, &C) -> Result<(), BoxError>>;

impl Server<()> {
    /// A server whose workers serve what `boot` builds: any tower service over [`Request`]s (an axum
    /// `Router`, a tower stack, a hyper service through [`crate::from_hyper`]) whose responses have any
    /// body of [`Bytes`], cloned for each connection; or [`crate::per_connection`], the service of each
    /// connection made from its client's address (see [`Connections`]).
    pub fn new<F, Fut, C>(boot: F) -> Server<()>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C, BootError>> + Send + 'static,
        C: Connections,
    {
        Server::with_settings(move |()| boot())
    }
}

impl<C: AppSettings> Server<C> {
    /// A server whose workers serve what `boot` builds from the application's settings `C`, which are read
    /// from the same file, environment and flags as the supervisor's (see [`AppSettings`]).
    pub fn with_settings<F, Fut, T>(boot: F) -> Server<C>
    where
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BootError>> + Send + 'static,
        T: Connections,
    {
        let boot = Arc::new(boot);
        Server {
            launch: Arc::new(move |config, hooks| Arc::new(Launch { config, boot: boot.clone(), hooks })),
            hooks: Hooks { label: None, service_answers_refusals: false },
            name: None,
            about: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
            commands: Vec::new(),
        }
    }

    /// The program's name in `--help` (default: the name it was started as).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A sentence about the program for `--help`.
    pub fn about(mut self, about: impl Into<String>) -> Self {
        self.about = Some(about.into());
        self
    }

    /// The program's version, for `--version` and the startup log (default: the supervisor crate's).
    /// Pass `env!("CARGO_PKG_VERSION")`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// How a request is labelled in the scoreboard, where the master reads it to name the requests of a
    /// worker that hangs or dies. Runs in the worker for every request, before the service sees it, and may
    /// add to the request (for example the request id it chose, as an extension). Default: the
    /// `X-Request-ID` header, when the client sent one.
    pub fn label(mut self, label: impl Fn(&mut Request) -> Label + Send + Sync + 'static) -> Self {
        self.hooks.label = Some(Arc::new(label));
        self
    }

    /// Requests that break a head limit or the `Host` rules go to the service, with the
    /// [`crate::Refusal`] in their extensions, for it to answer in its own format (the worker still closes
    /// the connection afterwards). Default: the worker answers them itself ([`crate::Refusal::response`]).
    pub fn answer_refusals(mut self) -> Self {
        self.hooks.service_answers_refusals = true;
        self
    }

    /// Adds a one-shot subcommand, `NAME`, run with the resolved settings after logging is set up (to
    /// standard output): for example the application's database migrations. An error is logged and exits 1.
    /// It runs in the process that parsed the command line, before any fork: it may build a runtime.
    pub fn command(
        mut self,
        name: &'static str,
        about: &'static str,
        run: impl Fn(&Settings, &C) -> Result<(), BoxError> + 'static,
    ) -> Self {
        self.commands.push(AppCommand { name, about, run: Box::new(run) });
        self
    }

    /// Parses the command line and runs what it asks for; returns the process exit code.
    pub fn main(self) -> ExitCode {
        let code = self.run(std::env::args_os());
        crate::logging::flush_before_exit();
        ExitCode::from(code)
    }

    fn run(self, args: impl IntoIterator<Item = OsString>) -> u8 {
        let args: Vec<OsString> = args.into_iter().collect();
        let matches = match self.cli(&args).try_get_matches_from(&args) {
            Ok(matches) => matches,
            Err(error) => {
                // Help and version go to stdout with 0, usage errors to stderr with 2.
                let _ = error.print();
                return u8::try_from(error.exit_code()).unwrap_or(EXIT_CONFIG);
            }
        };
        // A setting's flag may come before the subcommand or after it (after `ctl`'s own subcommand too): the
        // deepest wins.
        let mut scopes = vec![&matches];
        while let Some((_, sub)) = scopes[scopes.len() - 1].subcommand() {
            scopes.push(sub);
        }
        let inputs = Inputs {
            path: matches.get_one::<PathBuf>("config").cloned(),
            flags: (specs::<C>().into_iter().filter(|s| s.flag.is_some()))
                .filter_map(|s| {
                    let values = scopes.iter().rev().find_map(|m| m.try_get_many::<String>(s.key).ok().flatten())?;
                    Some((s.key, values.cloned().collect::<Vec<_>>().join(",")))
                })
                .collect(),
        };
        let command = matches.subcommand_name().unwrap_or("serve");
        if command == "healthcheck" {
            let sub = matches.subcommand_matches("healthcheck").expect("the healthcheck subcommand");
            return crate::healthcheck::probe(sub.get_one::<String>("url").expect("a default URL"));
        }
        if command == "ctl" {
            return self.ctl(matches.subcommand_matches("ctl").expect("the ctl subcommand"), &inputs, &args);
        }
        let config = match inputs.resolve::<C>() {
            Ok(config) => config,
            Err(error) => {
                eprintln!("{}: {error}", self.display_name(&args));
                return EXIT_CONFIG;
            }
        };
        match command {
            "check" => {
                for r in &config.report {
                    println!("{} = {}    # {}", r.key, r.shown, r.source);
                }
                for warning in config.app.warnings(&config.settings) {
                    println!("# warning: {warning}");
                }
                EXIT_OK
            }
            "serve" => self.serve(config, inputs),
            name => {
                let command = self.commands.iter().find(|c| c.name == name).expect("a declared subcommand");
                let log = crate::logging::LogSettings { file: None, ..config.settings.log.clone() };
                if let Err(error) = crate::logging::init(&log) {
                    eprintln!("{}: cannot set up logging: {error}", self.display_name(&args));
                    return EXIT_FAILURE;
                }
                match (command.run)(&config.settings, &config.app) {
                    Ok(()) => EXIT_OK,
                    Err(error) => {
                        tracing::error!(command = name, error = %error, "command failed");
                        EXIT_FAILURE
                    }
                }
            }
        }
    }

    fn serve(self, config: Resolved<C>, inputs: Inputs) -> u8 {
        if let Err(error) = crate::logging::init(&config.settings.log) {
            eprintln!("cannot set up logging: {error}");
            return EXIT_FAILURE;
        }
        // A panic is logged as one JSON line (with the request's span fields when it happens in a request),
        // instead of Rust's plain-text message on stderr.
        std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
        tracing::info!(
            version = self.version,
            config = inputs.path.as_ref().map(|p| p.display().to_string()),
            settings = %config.summary(),
            "effective settings"
        );
        for warning in config.app.warnings(&config.settings) {
            tracing::warn!(warning = %warning, "configuration warning");
        }
        let boot = (self.launch)(config.app.clone(), self.hooks.clone());
        let settings = config.settings.clone();
        let config_file = inputs.path.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        let identity = crate::master::Identity { version: self.version.clone(), config: config_file };
        let result = if settings.workers == 0 {
            crate::worker::serve_in_process(&settings, boot)
        } else {
            let launch = self.launch.clone();
            let hooks = self.hooks.clone();
            let running = config;
            let reloader: crate::master::Reloader = Box::new(move || {
                let config = inputs.resolve::<C>().map_err(|e| e.to_string())?;
                tracing::info!(settings = %config.summary(), "reloaded settings");
                let ignored = running.needs_restart(&config);
                if !ignored.is_empty() {
                    tracing::warn!(keys = %ignored.join(", "), "changed settings that only a restart applies: ignored");
                }
                Ok((config.settings, launch(config.app, hooks.clone())))
            });
            crate::master::run(settings, boot, reloader, identity)
        };
        match result {
            Ok(code) => u8::try_from(code).unwrap_or(EXIT_FAILURE),
            Err(error) => {
                tracing::error!(error = %error, "cannot start");
                eprintln!("cannot start: {error}");
                EXIT_FAILURE
            }
        }
    }

    /// `ctl`: one request to the running server's control socket, found through the same settings.
    fn ctl(&self, ctl: &clap::ArgMatches, inputs: &Inputs, args: &[OsString]) -> u8 {
        let (name, sub) = ctl.subcommand().expect("ctl requires a subcommand");
        let flag = |id: &str| sub.try_get_one::<bool>(id).ok().flatten().copied().unwrap_or(false);
        let wait = flag("wait").then(|| sub.get_one::<f64>("timeout").copied().unwrap_or(CTL_WAIT));
        let mut body = serde_json::json!({ "command": name });
        if let Some(timeout) = wait {
            body["wait"] = true.into();
            body["timeout"] = timeout.into();
        }
        if name == "stop" {
            body["fast"] = flag("fast").into();
        }
        if let Some(workers) = sub.try_get_one::<usize>("workers").ok().flatten() {
            body["workers"] = (*workers).into();
        }
        let request = crate::ctl::Request { body, wait: wait.map(Duration::from_secs_f64), json: flag("json") };
        match inputs.control_socket::<C>() {
            Ok(Some(path)) => crate::ctl::run(&path, &request),
            Ok(None) => {
                eprintln!("{}: the control socket is turned off (control_socket = \"off\")", self.display_name(args));
                EXIT_CONFIG
            }
            Err(error) => {
                eprintln!("{}: {error}", self.display_name(args));
                EXIT_CONFIG
            }
        }
    }

    /// The command line: the subcommands, `--config`, and one flag per declared setting that has one (on
    /// every subcommand but `ctl`, which takes those that locate the control socket).
    fn cli(&self, args: &[OsString]) -> clap::Command {
        use clap::{Arg, Command};
        let about = self.about.clone().unwrap_or_else(|| {
            "A prefork HTTP server. Flags beat the environment, which beats the config file.".to_string()
        });
        let settings = Self::setting_args();
        let mut cli = Command::new(self.display_name(args))
            .about(about)
            .version(self.version.clone())
            .arg(
                Arg::new("config")
                    .long("config")
                    .short('c')
                    .global(true)
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Config file (TOML)."),
            )
            .args(settings.clone())
            .subcommand(Command::new("serve").about("Serve (the default).").args(settings.clone()))
            .subcommand(
                Command::new("check")
                    .about("Validate the configuration and print the effective settings with their sources.")
                    .args(settings.clone()),
            )
            .subcommand(
                Command::new("healthcheck")
                    .about("Exit 0 if GET URL answers 2xx (for container health checks).")
                    .arg(Arg::new("url").default_value("http://127.0.0.1:8000/healthz").help("URL to probe."))
                    .args(settings.clone()),
            )
            .subcommand(ctl_command(&settings));
        for command in &self.commands {
            cli = cli.subcommand(Command::new(command.name).about(command.about).args(settings.clone()));
        }
        cli
    }

    /// One flag per declared setting that has one.
    fn setting_args() -> Vec<clap::Arg> {
        use clap::{Arg, ArgAction};
        (specs::<C>().into_iter())
            .filter_map(|s| {
                let arg = Arg::new(s.key).long(s.flag?).value_name("VALUE").help(s.doc);
                let arg = if let Some(short) = s.short { arg.short(short) } else { arg };
                let arg = if let Some((_, alias)) = s.alias { arg.visible_alias(alias) } else { arg };
                // A list flag may be repeated (`--bind a --bind b`) as well as comma-separated.
                Some(if s.kind == crate::config::Kind::List { arg.action(ArgAction::Append) } else { arg })
            })
            .collect()
    }

    fn display_name(&self, args: &[OsString]) -> String {
        self.name.clone().unwrap_or_else(|| {
            (args.first().map(std::path::Path::new))
                .and_then(|p| p.file_name())
                .map_or_else(|| "server".to_string(), |n| n.to_string_lossy().into_owned())
        })
    }
}

/// `ctl` and its commands. It takes the flags of the settings that locate the control socket (after any of
/// its commands), and `--config`.
fn ctl_command(settings: &[clap::Arg]) -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    let locating =
        settings.iter().filter(|a| CTL_SETTINGS.contains(&a.get_id().as_str())).map(|a| a.clone().global(true));
    let wait = Arg::new("wait")
        .long("wait")
        .action(ArgAction::SetTrue)
        .help("Answer once the outcome is known: exit 0 when it is done, 1 with the reason when it is not.");
    let timeout = Arg::new("timeout")
        .long("timeout")
        .value_name("SECONDS")
        .requires("wait")
        .value_parser(|s: &str| {
            s.parse::<f64>().ok().filter(|t| *t > 0.0 && t.is_finite()).ok_or("a positive number of seconds")
        })
        .help("With --wait: give up after this long (default 300), exit 1 saying where it stands.");
    let waiting = |name: &'static str, about: &'static str| Command::new(name).about(about).args([&wait, &timeout]);
    Command::new("ctl")
        .about("Ask the running server (through its control socket, found with the same settings as the server).")
        .subcommand_required(true)
        .args(locating)
        .subcommand(
            Command::new("status")
                .about("The master, its workers (what each serves, its memory), restarts, a reload in progress.")
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("As JSON (stable field names).")),
        )
        .subcommand(waiting("reload", "Reload, as HUP: read the configuration again and switch to a new generation."))
        .subcommand(waiting("upgrade", "Binary upgrade, as USR2: start the binary on disk as a new master."))
        .subcommand(
            Command::new("scale")
                .about("Keep this many workers.")
                .arg(Arg::new("workers").required(true).value_name("N").value_parser(clap::value_parser!(usize))),
        )
        .subcommand(waiting("recycle", "Replace every worker, one at a time, each replacement ready first."))
        .subcommand(
            waiting("stop", "Stop gracefully, as TERM (--fast: at once, as QUIT).")
                .arg(Arg::new("fast").long("fast").action(ArgAction::SetTrue).help("A fast stop, as QUIT.")),
        )
        .subcommand(Command::new("reopen-logs").about("Reopen the log file, as USR1."))
}

/// What the command line says about the configuration: the file, and the setting flags by key.
struct Inputs {
    path: Option<PathBuf>,
    flags: BTreeMap<&'static str, String>,
}

impl Inputs {
    /// The layers read now (the file, this process's environment, the flags), resolved.
    fn resolve<C: AppSettings>(&self) -> Result<Resolved<C>, ConfigError> {
        let specs = specs::<C>();
        let layers = Layers::new(
            self.path.as_deref(),
            &specs,
            &sections::<C>(),
            |name| std::env::var(name).ok(),
            self.flags.clone(),
        )?;
        Resolved::from_layers(&layers, crate::cpus::usable_cpus())
    }

    /// Only where the control socket is (see [`crate::Settings::resolve_control_socket`]): unknown keys and
    /// bad values of other settings in the file are not this reader's concern.
    fn control_socket<C: AppSettings>(&self) -> Result<Option<PathBuf>, ConfigError> {
        let specs = specs::<C>();
        let layers =
            Layers::lenient(self.path.as_deref(), &specs, |name| std::env::var(name).ok(), self.flags.clone())?;
        crate::Settings::resolve_control_socket(&mut Resolver::new(&layers))
    }
}

/// One generation's application: its settings and the boot function, behind [`Boot`] so that the master
/// holds it without knowing the service's type.
struct Launch<C, F> {
    config: C,
    boot: Arc<F>,
    hooks: Hooks,
}

impl<C, F, Fut, T> Boot for Launch<C, F>
where
    C: AppSettings,
    F: Fn(C) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, BootError>> + Send + 'static,
    T: Connections,
{
    fn boot_and_serve<'a>(&'a self, worker: Worker<'a>) -> Pin<Box<dyn Future<Output = i32> + 'a>> {
        Box::pin(crate::worker::boot_and_serve((self.boot)(self.config.clone()), worker, &self.hooks))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn server() -> Server<()> {
        Server::new(|| async {
            Ok(crate::from_hyper(hyper::service::service_fn(|_| async {
                Ok::<_, BoxError>(hyper::Response::new(http_body_util::Empty::<Bytes>::new()))
            })))
        })
    }

    #[test]
    fn the_command_line_has_a_flag_per_top_level_setting() {
        let cli = server().command("migrate", "Apply the migrations.", |_, _| Ok(())).cli(&["prog".into()]);
        cli.clone().debug_assert();
        for s in crate::settings::SETTINGS {
            assert!(cli.get_arguments().any(|a| a.get_id() == s.key), "{}", s.key);
        }
        let matches = cli.clone().try_get_matches_from(["prog", "migrate", "--worker-connections", "5", "-w", "3"]);
        let matches = matches.unwrap();
        let migrate = matches.subcommand_matches("migrate").unwrap();
        assert_eq!(migrate.get_one::<String>("max_connections").map(String::as_str), Some("5"));
        assert_eq!(migrate.get_one::<String>("workers").map(String::as_str), Some("3"));
        // ctl takes its own --timeout (the wait's), and only the flags that locate the control socket.
        let matches =
            cli.clone().try_get_matches_from(["prog", "ctl", "reload", "--wait", "--timeout", "5", "--bind", ":9"]);
        let reload = matches.unwrap().subcommand_matches("ctl").unwrap().subcommand_matches("reload").unwrap().clone();
        assert_eq!(reload.get_one::<f64>("timeout"), Some(&5.0));
        assert_eq!(reload.get_many::<String>("bind").unwrap().collect::<Vec<_>>(), [":9"]);
        assert!(cli.clone().try_get_matches_from(["prog", "ctl", "status", "--workers", "3"]).is_err());
        assert!(
            cli.try_get_matches_from(["prog", "ctl", "reload", "--timeout", "5"]).is_err(),
            "--timeout needs --wait"
        );
    }

    #[test]
    fn usage_errors_exit_2_and_help_exits_0() {
        assert_eq!(server().run(["prog".into(), "--no-such-flag".into()]), EXIT_CONFIG);
        assert_eq!(server().run(["prog".into(), "--version".into()]), EXIT_OK);
        assert_eq!(server().run(["prog".into(), "check".into(), "--timeout".into(), "0".into()]), EXIT_CONFIG);
    }
}
