//! The HTTP contract (docs/http-api.md) against the app served in-process with a real PostgreSQL: every error
//! code, request ids, panics, deadlines, CORS and the items resource.

mod support;

use std::time::Duration;

use support::server::TestServer;
use support::{config, migrate};
use test_support::app_checks::*;
use test_support::pg::PgServer;
use test_support::{TempDir, free_port};

const ALLOWED_ORIGIN: &str = "https://app.example.com";

#[test]
fn contract_against_a_migrated_database() {
    let pg = PgServer::new();
    migrate(&pg.url());
    let mut config = config(Some(pg.url()));
    config.max_body_bytes = 1024;
    config.request_timeout = Duration::from_millis(300);
    config.cors_origins = vec![ALLOWED_ORIGIN.to_owned()];
    let server = TestServer::start(config);
    let base = server.base.as_str();

    check_healthz(base);
    check_head(base);
    check_readyz_ready(base);
    check_request_id_echo(base);
    check_not_found(base);
    check_method_not_allowed(base);
    check_unsupported_media_type(base);
    check_malformed_json(base);
    check_validation_errors(base);
    check_payload_too_large(base, 1024);
    check_panic_is_500(base);
    check_timeout_is_504(base, 2_000);
    check_items_crud(base);
    check_pagination(base);
    check_cors(base, ALLOWED_ORIGIN);
    // The worker survived all of the above.
    check_healthz(base);
}

#[test]
fn the_worker_boots_and_answers_503_while_the_database_is_down() {
    // Nobody listens on this port: every connection attempt is refused.
    let url = format!("postgres://postgres:secret@127.0.0.1:{}/postgres", free_port());
    let server = TestServer::start(config(Some(url)));
    check_healthz(&server.base);
    let body = assert_error(&get(&server.base, "/api/items"), 503, "not_ready");
    assert!(!body.to_string().contains("secret"), "{body}");
    check_readyz_not_ready(&server.base, "database", "unavailable");
}

#[test]
fn without_a_database_url_only_the_database_routes_fail() {
    let server = TestServer::start(config(None));
    check_healthz(&server.base);
    check_readyz_not_ready(&server.base, "database", "not_configured");
    assert_error(&get(&server.base, "/api/items"), 503, "not_ready");
}

#[test]
fn debug_routes_exist_only_when_enabled() {
    let mut config = config(None);
    config.debug_routes = false;
    let server = TestServer::start(config);
    for path in ["/debug/panic", "/debug/sleep?ms=1", "/debug/block?ms=1"] {
        assert_error(&get(&server.base, path), 404, "not_found");
    }
}

#[test]
fn boot_fails_while_the_debug_fail_file_exists() {
    let dir = TempDir::new("app-boot-fail");
    let file = dir.join("fail-boot");
    let mut config = config(None);
    config.debug_fail_boot_file = Some(file.clone());

    assert!(TestServer::try_start(config.clone()).is_ok(), "no file yet: boots");
    std::fs::write(&file, b"").unwrap();
    let err = TestServer::try_start(config).err().expect("boot must fail while the file exists");
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
}
