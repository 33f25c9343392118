//! systemd integration end to end: socket activation through a fake activator, and the notification
//! protocol on a test NOTIFY_SOCKET.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use test_support::*;

/// Receives the next notification, or panics after `timeout`.
fn next_message(socket: &UnixDatagram, timeout: Duration) -> String {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

// serves on the activated socket without binding; notifications arrive in order.
#[test]
fn socket_activation_and_notifications() {
    let activated = free_port();
    let configured = free_port();
    let dir = TempDir::new("systemd");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    // The fake activator: bind the socket, hand it over as fd 3 with LISTEN_PID naming the exec'd process.
    let activator = format!(
        "import os, socket, sys\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {activated}))\n\
         s.listen(128)\n\
         os.dup2(s.fileno(), 3)\n\
         os.set_inheritable(3, True)\n\
         os.environ['LISTEN_FDS'] = '1'\n\
         os.environ['LISTEN_PID'] = str(os.getpid())\n\
         os.execv(sys.argv[1], sys.argv[1:])\n"
    );
    let config = config_with(configured, "", "");
    let notify_env = notify_path.display().to_string();
    let mut server = Server::launch(activated, &config, &[("NOTIFY_SOCKET", &notify_env)], |path| {
        let mut cmd = Command::new(&provision::tools().python3);
        cmd.arg("-c").arg(&activator).arg(binary!()).arg("--config").arg(path);
        cmd
    });
    server.wait_workers_ready(2);
    let ready = next_message(&notify, Duration::from_secs(10));
    assert!(ready.starts_with("READY=1"), "first message: {ready:?}");
    assert!(ready.contains("STATUS=serving: 2 workers"), "{ready:?}");
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200, "serves on the activated socket");
    assert!(std::net::TcpStream::connect(("127.0.0.1", configured)).is_err(), "the configured bind was not used");
    assert!(server.stdout.all().iter().all(|l| !l.contains("LISTEN_FDS")), "variables not leaked into logs");

    server.signal(libc::SIGHUP);
    let reloading = next_message(&notify, Duration::from_secs(10));
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    let ready_again = next_message(&notify, Duration::from_secs(10));
    assert!(ready_again.starts_with("READY=1"), "{ready_again:?}");
    assert_eq!(get(server.addr(), "/healthz").unwrap().status, 200, "the reload kept the activated socket");

    server.signal(libc::SIGTERM);
    assert_eq!(next_message(&notify, Duration::from_secs(5)), "STOPPING=1\nSTATUS=stopping");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

// The watchdog is fed at half the manager's interval.
#[test]
fn the_watchdog_is_fed() {
    let port = free_port();
    let dir = TempDir::new("watchdog");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let notify_env = notify_path.display().to_string();
    let server = Server::start_with(
        binary!(),
        port,
        &base_config(port),
        &[("NOTIFY_SOCKET", &notify_env), ("WATCHDOG_USEC", "400000")],
        &[],
    );
    server.wait_workers_ready(2);
    let mut pings = 0;
    while pings < 3 {
        if next_message(&notify, Duration::from_secs(2)) == "WATCHDOG=1" {
            pings += 1;
        }
    }
}
