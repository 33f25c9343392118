//! `supervisor ctl` against the real binary: the status, commands that wait for their outcome (a reload that
//! works, one whose configuration is refused, one whose workers cannot boot), scale, recycle, stop; clients
//! that misbehave or belong to another user; the socket's life (removed on exit, a stale one replaced, a
//! live one never taken). The binary upgrade through `ctl` is in upgrade.rs, beside the other upgrades.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use test_support::process::is_root;
use test_support::*;

/// Where `Server::launch` put the control socket (the test did not place it).
fn socket(server: &Server) -> PathBuf {
    server.dir.join("supervisor.ctl")
}

/// The command's standard output; it must have succeeded.
fn ok(out: Output) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    stdout.into_owned()
}

/// The command's standard error; it must have exited 1.
fn fails(out: Output) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    stderr.into_owned()
}

/// `ctl status --json`.
fn status(server: &Server) -> Value {
    serde_json::from_str(&ok(server.ctl(binary!(), &["status", "--json"]))).expect("JSON")
}

/// Pid -> generation of the workers `ctl status` shows.
fn generations(status: &Value) -> Vec<(i64, u64)> {
    let workers = status["workers"].as_array().expect("workers");
    workers.iter().map(|w| (w["pid"].as_i64().unwrap(), w["generation"].as_u64().unwrap())).collect()
}

/// One raw request on the socket, and the line the master answers (`None`: the connection ended or failed
/// without one).
fn exchange(path: &Path, request: &[u8]) -> Option<Value> {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    answer(&stream)
}

fn answer(stream: &UnixStream) -> Option<Value> {
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => None,
        Ok(_) => Some(serde_json::from_str(&line).expect("a JSON answer")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("no answer and no end within 10 s: {e}"),
    }
}

// status: the master, every worker with what it serves, restarts; as JSON and as a table.
#[test]
fn status_shows_the_master_and_what_every_worker_serves() {
    let server = Server::start_ready(binary!(), "", "", 2);
    let addr = server.addr();
    let slow = std::thread::spawn(move || {
        request(addr, "GET", "/debug/sleep?ms=3000", &["X-Request-ID: ctl-in-flight"], b"").unwrap().status
    });
    // Memory is sampled once a second; the request shows while it sleeps.
    let s = wait_for(Duration::from_secs(10), "the request in flight and memory sampled", || {
        let s = status(&server);
        let workers = s["workers"].as_array()?;
        let busy = workers.iter().any(|w| w["requests_in_flight"][0]["request_id"] == "ctl-in-flight");
        let sampled = workers.iter().all(|w| w["memory_bytes"].as_u64() > Some(0));
        (busy && sampled).then_some(s)
    });
    assert_eq!(s["pid"].as_i64(), Some(server.pid as i64));
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["config_file"].as_str(), Some(server.config.to_str().unwrap()));
    assert_eq!(s["control_socket"].as_str(), Some(socket(&server).to_str().unwrap()));
    assert_eq!(
        (s["phase"].as_str(), s["generation"].as_u64(), s["workers_wanted"].as_u64()),
        (Some("running"), Some(1), Some(2))
    );
    assert!(s["uptime_seconds"].as_f64() > Some(0.0) && s["reload"].is_null() && s["upgrade"].is_null());
    let pids: Vec<i64> = generations(&s).into_iter().map(|(p, _)| p).collect();
    assert_eq!(pids.iter().map(|&p| p as i32).collect::<Vec<_>>(), server.workers());
    let busy = s["workers"].as_array().unwrap().iter().find(|w| w["in_flight"] == 1).expect("the busy worker");
    let r = &busy["requests_in_flight"][0];
    assert_eq!((r["method"].as_str(), r["path"].as_str()), (Some("GET"), Some("/debug/sleep")));
    assert!(r["age_seconds"].as_f64() >= Some(0.0) && busy["connections"].as_u64() >= Some(1));
    assert_eq!(busy["state"], "ready");
    assert!(busy["age_seconds"].as_f64() > Some(0.0) && busy["requests"].is_u64() && busy["slot"].is_u64());
    assert_eq!(s["restarts"]["recycle_operator"], 0);
    assert_eq!(s["reloads"]["ok"], 0);

    let table = ok(server.ctl(binary!(), &["status"]));
    assert!(table.contains(&format!("master {}", server.pid)), "{table}");
    assert!(table.contains("GET /debug/sleep  id=ctl-in-flight"), "{table}");
    for pid in &pids {
        assert!(table.contains(&pid.to_string()), "{table}");
    }
    assert_eq!(slow.join().unwrap(), 200);
}

// reload --wait: exit 0 once the new generation serves; non-zero with the reason (the key, the boot error)
// when the master aborts it, the old generation still serving without a failed request.
#[test]
fn reload_wait_reports_the_new_generation_or_why_the_old_one_still_serves() {
    let server = Server::start_ready(binary!(), "", "", 2);
    let old = server.workers();
    let load = Load::start(server.addr(), "/healthz", 4, 2);

    server.rewrite("timeout = 0", "");
    let why = fails(server.ctl(binary!(), &["reload", "--wait", "--timeout", "30"]));
    assert!(why.contains("reload aborted: configuration rejected") && why.contains("`timeout`"), "{why}");
    server.rewrite("", "no_such_setting = 1");
    let why = fails(server.ctl(binary!(), &["reload", "--wait"]));
    assert!(why.contains("`app.no_such_setting`") && why.contains("unknown key"), "{why}");
    let flag = server.dir.join("fail-boot");
    std::fs::write(&flag, "").unwrap();
    server.rewrite("", &format!("debug_fail_boot_file = {:?}", flag.display().to_string()));
    let why = fails(server.ctl(binary!(), &["reload", "--wait", "--timeout", "30"]));
    assert!(why.contains("died before the switch: boot refused: debug_fail_boot_file"), "{why}");
    let s = status(&server);
    assert_eq!(s["generation"], 1);
    assert_eq!(generations(&s).into_iter().filter(|(_, g)| *g == 1).count(), 2);
    assert_eq!(server.workers().into_iter().filter(|p| old.contains(p)).count(), 2, "the old workers serve");
    assert_eq!(s["reloads"]["aborted"], 3);

    std::fs::remove_file(&flag).unwrap();
    server.rewrite("workers = 3", "");
    let done = ok(server.ctl(binary!(), &["reload", "--wait", "--timeout", "30"]));
    assert!(done.starts_with("reload complete: generation 5 serving with 3 workers"), "{done}");
    let s = status(&server);
    assert_eq!(s["generation"], 5);
    let new: Vec<(i64, u64)> = generations(&s).into_iter().filter(|(_, g)| *g == 5).collect();
    assert_eq!(new.len(), 3, "{s}");
    assert!(new.iter().all(|(p, _)| !old.contains(&(*p as i32))));
    let stats = load.finish();
    assert!(stats.failures.is_empty(), "{:?}", &stats.failures[..stats.failures.len().min(5)]);

    // Not waiting: answered at once.
    let started = ok(server.ctl(binary!(), &["reload"]));
    assert_eq!(started.trim(), "reload started: generation 6");
}

// scale, recycle (one at a time, replacement first, no failed request), reopen-logs, stop --wait, stop --fast.
#[test]
fn scale_recycle_reopen_logs_and_stop_do_what_they_say() {
    let mut server = Server::start_ready(binary!(), "", "", 2);
    assert_eq!(ok(server.ctl(binary!(), &["scale", "3"])).trim(), "worker count set to 3 (was 2)");
    let before = server.wait_workers_ready(3);
    assert!(fails(server.ctl(binary!(), &["scale", "0"])).contains("between 1 and 128"));

    let load = Load::start(server.addr(), "/healthz", 6, 2);
    let done = ok(server.ctl(binary!(), &["recycle", "--wait", "--timeout", "60"]));
    assert_eq!(done.trim(), "recycled 3 workers");
    let after = server.wait_workers_ready(3);
    assert!(after.iter().all(|p| !before.contains(p)), "every worker replaced: {before:?} -> {after:?}");
    let stats = load.finish();
    assert!(stats.failures.is_empty(), "{:?}", &stats.failures[..stats.failures.len().min(5)]);
    assert!(min_ready_after_startup(&server, 3) >= 3, "never fewer than 3 ready workers");
    let retired = server.master_logs("worker retiring: its replacement is ready");
    assert_eq!(retired.iter().filter(|l| field(l, "reason") == "recycle_operator").count(), 3);
    wait_for(Duration::from_secs(10), "the recycled workers counted", || {
        (status(&server)["restarts"]["recycle_operator"] == 3).then_some(())
    });

    assert!(ok(server.ctl(binary!(), &["reopen-logs"])).contains("nothing to reopen"));
    assert_eq!(ok(server.ctl(binary!(), &["stop", "--wait"])).trim(), "stopped (exit code 0)");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!socket(&server).exists(), "the socket goes with its master");

    let mut server = Server::start_ready(binary!(), "", "", 2);
    assert_eq!(ok(server.ctl(binary!(), &["stop", "--fast"])).trim(), "fast stop started");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(server.master_logs("fast stop").len() == 1);
}

// Clients that never send, send garbage or a megabyte, or come a hundred at once: each is answered with
// an error or dropped, while the master goes on serving signals and workers, and stays idle.
#[test]
fn misbehaving_clients_get_an_error_or_are_dropped_and_the_master_carries_on() {
    let server = Server::start_ready(binary!(), "", "", 2);
    let path = socket(&server);
    let cpu_before = cpu_time(server.pid);

    let garbage = exchange(&path, b"\x00\xffGET / HTTP/1.1\r\n\r\n").expect("an answer");
    assert!(garbage["error"].as_str().unwrap().starts_with("not a JSON request"), "{garbage}");
    let unknown = exchange(&path, b"{\"command\":\"reboot\"}\n").expect("an answer");
    assert!(unknown["error"].as_str().unwrap().starts_with("unknown command"), "{unknown}");
    // A megabyte: the master reads past its limit, answers, and closes; the rest of the write fails.
    let big = UnixStream::connect(&path).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let writer = big.try_clone().unwrap();
    let write = std::thread::spawn(move || (&writer).write_all(&vec![b'x'; 1 << 20]));
    // Either answered, or dropped.
    if let Some(answer) = answer(&big) {
        assert!(answer["error"].as_str().unwrap().contains("too large"), "{answer}");
    }
    assert!(write.join().unwrap().is_err(), "the master does not take a megabyte");

    // A hundred clients at once that never send: at most 32 are served, the others are told at once, and
    // the served ones get an error at their deadline.
    let idle: Vec<UnixStream> = (0..100).map(|_| UnixStream::connect(&path).unwrap()).collect();
    for stream in &idle {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    // Meanwhile the master serves signals and workers.
    server.signal(libc::SIGTTIN);
    server.wait_workers_ready(3);
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200);
    let answers: Vec<Option<Value>> = idle.iter().map(answer).collect();
    let said = |text: &str| answers.iter().flatten().filter(|a| a["error"].as_str().unwrap().contains(text)).count();
    let (busy, timed_out, dropped) = (said("busy"), said("timed out"), answers.iter().filter(|a| a.is_none()).count());
    assert!(busy >= 100 - 32, "{busy} told busy");
    assert!(timed_out >= 1, "the ones that never sent were told");
    assert_eq!(busy + timed_out + dropped, 100, "{answers:?}");
    drop(idle);

    assert_eq!(status(&server)["pid"].as_i64(), Some(server.pid as i64), "served again");
    let used = cpu_time(server.pid) - cpu_before;
    // Over about 4 s of wall time: a master looping on a client would have used most of it.
    assert!(used < Duration::from_millis(1000), "the master used {used:?} of CPU");
}

// A user other than the server's: the socket's mode keeps it out; with the mode opened up, the master's own
// check (SO_PEERCRED) refuses it and logs who it was.
#[test]
fn a_client_of_another_user_is_refused_and_logged() {
    if !is_root() {
        eprintln!("skipped: running a client as another user needs root (runuser)");
        return;
    }
    let server = Server::start_ready(binary!(), "", "", 2);
    let config = server.config.display().to_string();
    let env: Vec<(&str, &str)> = server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let as_nobody =
        || run_binary("runuser", &["-u", "nobody", "--", binary!(), "ctl", "status", "--config", &config], &env);
    assert!(fails(as_nobody()).contains("permission denied"));
    std::fs::set_permissions(socket(&server), std::fs::Permissions::from_mode(0o666)).unwrap();
    let why = fails(as_nobody());
    assert!(why.contains("only the server's user and root"), "{why}");
    let refused = server.wait_log(Duration::from_secs(5), "the refusal logged", |l| {
        field(l, "msg") == "control client refused: neither the server's user nor root"
    });
    assert_eq!(refused["peer_uid"].as_u64(), Some(65534), "{refused}");
    assert_eq!(status(&server)["pid"].as_i64(), Some(server.pid as i64), "root still is served");
}

// The socket is removed on exit; one left by a SIGKILLed master is replaced at the next start; a live one is
// never taken: a second server configured with it refuses to start.
#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not_taken() {
    let shared = TempDir::new("ctl-shared");
    let path = shared.join("s.ctl");
    let top = format!("workers = 1\ncontrol_socket = {:?}", path.display().to_string());
    let mut first = Server::start_ready(binary!(), &top, "", 1);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    let mut second = Server::start(binary!(), &top, "");
    assert_eq!(second.wait_exit(Duration::from_secs(10)).code(), Some(1), "it refuses to start");
    let why = second.stderr.all().join("\n");
    assert!(why.contains("cannot serve the control socket") && why.contains("a running server answers there"), "{why}");
    assert_eq!(status(&first)["pid"].as_i64(), Some(first.pid as i64), "the first one keeps its socket");

    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    assert!(path.exists(), "a killed master leaves its socket");
    let mut third = Server::start_ready(binary!(), &top, "", 1);
    third.wait_log(Duration::from_secs(5), "the stale socket replaced", |l| {
        field(l, "msg") == "replaced a stale control socket: its server is gone"
    });
    assert_eq!(status(&third)["pid"].as_i64(), Some(third.pid as i64));
    third.signal(libc::SIGTERM);
    assert_eq!(third.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!path.exists(), "removed on a clean exit");
}

// ctl locates the socket through the same settings as the server (here: beside the pidfile, from the file or
// a flag). (Every service built on the library has ctl: see examples.rs.)
#[test]
fn ctl_finds_the_socket_through_the_servers_settings() {
    let dir = TempDir::new("ctl-pidfile");
    let pidfile = dir.join("server.pid");
    let server = Server::start_ready(binary!(), &format!("pidfile = {:?}", pidfile.display().to_string()), "", 2);
    assert!(dir.join("server.ctl").exists(), "beside the pidfile");
    assert_eq!(status(&server)["control_socket"].as_str(), Some(dir.join("server.ctl").to_str().unwrap()));
    let pidfile = pidfile.display().to_string();
    let by_flag = run_binary(binary!(), &["ctl", "status", "--json", "--pidfile", &pidfile], &[]);
    let by_flag: Value = serde_json::from_str(&ok(by_flag)).unwrap();
    assert_eq!(by_flag["pid"].as_i64(), Some(server.pid as i64));
    let elsewhere = dir.join("nothing.ctl").display().to_string();
    let why = fails(run_binary(binary!(), &["ctl", "status", "--control-socket", &elsewhere], &[]));
    assert!(why.contains("no control socket at") && why.contains("nothing.ctl"), "{why}");
    let off = run_binary(binary!(), &["ctl", "status", "--control-socket", "off"], &[]);
    assert_eq!(off.status.code(), Some(2), "turned off");
}
