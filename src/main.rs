//! `supervisor`: the prefork HTTP server of this repository. The `app` crate's service, run under the
//! `supervisor` crate's [`supervisor::Server`], like any other service: the command line, the settings
//! (the supervisor's and the app's, declared in their crates), signals, logging and exit codes all come from
//! there. This binary adds the app's own answers to refused requests, and `migrate`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    // Allocated once, before any worker exists: every worker and every generation count into it.
    let metrics = match app::Metrics::shared() {
        Ok(metrics) => metrics,
        Err(error) => {
            eprintln!("supervisor: cannot map the metrics memory: {error}");
            return ExitCode::FAILURE;
        }
    };
    supervisor::Server::with_settings(move |config: app::Config| app::App::boot(config, metrics))
        .name("supervisor")
        .about("A prefork HTTP application server. Flags beat the environment, which beats the config file.")
        .version(env!("CARGO_PKG_VERSION"))
        .answer_refusals()
        .command("migrate", "Apply the embedded database migrations.", migrate)
        .main()
}

/// `supervisor migrate`: applies the embedded migrations under the advisory lock, in this process (the
/// master never builds a runtime; this command is not the master).
fn migrate(_: &supervisor::Settings, config: &app::Config) -> Result<(), supervisor::BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(app::migrate(config))?;
    tracing::info!(report = %report, "migrations done");
    Ok(())
}

/// The files generated from the settings' declarations, checked against the ones in the repository:
/// `BLESS=1 cargo test --bin supervisor settings` rewrites them.
#[cfg(test)]
mod settings {
    use supervisor::server_settings as settings;

    /// Compares `actual` with the file at `path` (relative to the workspace root); with `BLESS=1`, rewrites
    /// the file instead.
    fn expect_file(path: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert!(
            expected == actual,
            "{} differs from the settings' declarations; run `BLESS=1 cargo test --bin supervisor settings` to \
             rewrite it",
            path.display()
        );
    }

    const BEGIN: &str = "<!-- settings: generated from the settings' declarations, do not edit by hand -->\n";
    const END: &str = "<!-- end of settings -->\n";

    #[test]
    fn the_sample_config_lists_every_setting() {
        expect_file("conf/supervisor.toml", &settings::sample_toml::<app::Config>());
    }

    #[test]
    fn the_docs_list_every_setting() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let (before, rest) = text.split_once(BEGIN).expect("the docs have a generated settings block");
        let (_, after) = rest.split_once(END).expect("the generated block ends");
        expect_file(
            "docs/configuration.md",
            &format!("{before}{BEGIN}{}{END}{after}", settings::docs_tables::<app::Config>()),
        );
    }

    #[test]
    fn the_declarations_are_consistent() {
        assert_eq!(settings::lint::<app::Config>(), Ok(()));
    }
}
