//! The API description defended by a third party: schemathesis generates requests from the `/openapi.json` the
//! real binary serves (with a throwaway PostgreSQL) and runs all of its checks on every answer: status codes,
//! content types, headers and bodies against the declared schemas, invalid data refused, valid data accepted,
//! undeclared methods answered 405 with `Allow`, and stateful sequences along the document's links (create,
//! then get and delete the item). openapi-spec-validator checks the served document itself.
//!
//! Ignored by `cargo test`, because its first run installs the Python tools from PyPI (pinned in
//! `tests/openapi/requirements.txt`, into a virtual environment under `~/.cache/prefork-server/`); `.ci/run`
//! runs it: `cargo test --test openapi -- --ignored`.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use test_support::http_client::get;
use test_support::pg::PgServer;
use test_support::process::run_within;
use test_support::pypi::Venv;
use test_support::*;

/// Fixed, so that a run can be repeated (`st run ... --seed`).
const SEED: u64 = 1;
/// Cases per operation and phase; about 2,000 requests in all, 15 to 25 s here.
const MAX_EXAMPLES: u32 = 200;
/// The fewest requests a run must send to count.
const MIN_CASES: u64 = 1000;
/// The whole schemathesis run; past it the run is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(100);

fn tools() -> Venv {
    Venv::provide("openapi-tools", &workspace_root().join("tests/openapi/requirements.txt"))
}

// The served document is valid OpenAPI 3.1, and a schemathesis run over it finds nothing: at least MIN_CASES
// requests in every phase, no failure, no error, no warning, and no error line in the server's log.
#[test]
#[ignore = "installs schemathesis from PyPI the first time; .ci/run runs it"]
fn schemathesis_finds_every_answer_described() {
    let tools = tools();
    let pg = PgServer::new();
    let migrated = migrate(binary!(), &pg.url());
    assert!(migrated.status.success(), "migrate: {}", String::from_utf8_lossy(&migrated.stdout));
    let port = free_port();
    // As deployed: no debug routes (they are not part of the API), the default limits and request timeout.
    let config = config_with(port, "", "").replace("debug_routes = true", "debug_routes = false");
    let server = Server::start_with(binary!(), port, &config, &[("DATABASE_URL", &pg.url())], &[]);
    server.wait_workers_ready(2);
    let base = server.base();
    let dir = TempDir::new("openapi");

    // The document as served is the file in the repository, and valid OpenAPI 3.1.
    let served = get(&base, "/openapi.json");
    assert_eq!(served.status, 200);
    assert_eq!(served.body, std::fs::read(workspace_root().join("app/openapi.json")).unwrap());
    let document = dir.join("openapi.json");
    std::fs::write(&document, &served.body).unwrap();
    let log = dir.join("openapi-spec-validator.log");
    let mut validate = Command::new(tools.program("openapi-spec-validator"));
    validate.arg(&document);
    let (status, _) = run_within(&mut validate, Duration::from_secs(60), &log).unwrap_or_else(|e| panic!("{e}"));
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(status.success() && output.contains(": OK"), "openapi-spec-validator: {output}");

    let report = dir.join("report.json");
    let mut run = Command::new(tools.program("st"));
    // The served document, from the file it was saved to: loaded from its URL, schemathesis would leave out the
    // operation that served it, GET /openapi.json.
    run.arg("run")
        .arg(&document)
        .args(["--url", &base])
        .args(["--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &MAX_EXAMPLES.to_string(), "--seed", &SEED.to_string()])
        .args(["--request-timeout", "30"])
        // Nothing remembered between runs: each run generates from the seed alone.
        .args(["--generation-database", "none"])
        // Hypothesis reports a generator that is slow on this machine as an error; how fast data is generated
        // says nothing about the API, and the machine is shared, so it is no failure here.
        .args(["--suppress-health-check", "too_slow"])
        .args(["--no-color", "--report", "json", "--report-json-path"])
        .arg(&report)
        .current_dir(dir.path());
    let log = dir.join("schemathesis.log");
    let outcome = run_within(&mut run, RUN_LIMIT, &log);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let (status, took) = outcome.unwrap_or_else(|e| panic!("{e}\n{output}"));
    let summary: Value = std::fs::read(&report)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| panic!("schemathesis wrote no report ({status}):\n{output}"));
    let failed = |what: &str| panic!("schemathesis: {what}\n{}", failures(&output));

    if !status.success() || summary["exit_code"] != 0 || summary["complete"] != true {
        failed(&format!("the run failed ({status})"));
    }
    let cases = &summary["test_cases"];
    let generated = cases["generated"].as_u64().unwrap_or(0);
    if generated < MIN_CASES {
        failed(&format!("{generated} requests, fewer than {MIN_CASES}"));
    }
    if cases["with_failures"] != 0 || cases["errored"] != 0 || !is_empty(&summary["failures"]) {
        failed("failures");
    }
    if !is_empty(&summary["errors"]) {
        failed(&format!("errors: {}", summary["errors"]));
    }
    for phase in ["examples", "coverage", "fuzzing", "stateful"] {
        if summary["phases"][phase]["status"] != "success" {
            failed(&format!("phase {phase}: {}", summary["phases"][phase]));
        }
    }
    let operations = &summary["operations"];
    let described = described_operations(&serde_json::from_slice(&served.body).unwrap());
    if operations["tested"] != described || operations["total"] != described {
        failed(&format!("operations: {operations}, while the document describes {described}"));
    }
    let warnings: Vec<String> = summary["warnings"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, list)| !is_empty(list))
        .map(|(kind, list)| format!("{kind}: {list}"))
        .collect();
    if !warnings.is_empty() {
        failed(&format!("warnings: {warnings:?}"));
    }

    let errors: Vec<String> = server
        .stdout
        .all()
        .into_iter()
        .chain(server.stderr.all())
        .filter(|line| serde_json::from_str::<Value>(line).is_ok_and(|l| field(&l, "level") == "error"))
        .collect();
    assert!(errors.is_empty(), "the server logged errors during the run:\n{}", errors.join("\n"));
    // Read by whoever looks at CI's log: what was run, and how long it took.
    eprintln!(
        "schemathesis {}: {generated} requests over {} operations, seed {SEED}, no failures, in {:.1} s",
        summary["schemathesis_version"].as_str().unwrap_or("?"),
        operations["total"],
        took.as_secs_f64()
    );
}

/// How many operations (path and method) a document describes.
fn described_operations(document: &Value) -> u64 {
    let methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let paths = document["paths"].as_object().expect("paths");
    paths.values().map(|item| methods.iter().filter(|m| item.get(**m).is_some()).count() as u64).sum()
}

/// A JSON array or object with nothing in it (or null).
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

/// schemathesis's own account of what failed: its output from the failures on, or the whole of it.
fn failures(output: &str) -> &str {
    output.find("FAILURES").or_else(|| output.find("ERRORS")).map_or(output, |at| &output[at..])
}
