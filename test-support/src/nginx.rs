//! The edge in tests: the shipped nginx configuration (`conf/nginx/`), rendered like the container renders it,
//! run by Debian's nginx on a loopback port in front of a test upstream.
//!
//! - [`render`] is the Rust twin of `conf/nginx/render.sh` (the official image's envsubst of the defined
//!   variables whose names start with `EDGE_`, refusing unset or empty ones); the tests compare both outputs.
//! - [`Nginx::start`] lays out a prefix directory the way the image lays out `/etc/nginx` (main `nginx.conf`,
//!   `mime.types`, `snippets/`, rendered `edge.d/`), with the site, logs, pid file and every temp path under
//!   the test's own temporary directory, and runs `nginx -p DIR -c DIR/conf/nginx.conf -g 'daemon off; ...'`.
//!   Drop stops it by pid (SIGTERM, then SIGKILL of the master and its workers after a deadline).
//! - The binary is `$NGINX_BIN` or Debian's `/usr/sbin/nginx`, found or installed by [`crate::provision`];
//!   `openssl` (for the TLS variant's certificate and client) likewise.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::process::{alive, children, signal};
use crate::{POLL_INTERVAL, TempDir, free_port, poll, provision, wait_for, workspace_root};

/// Only variables with this prefix are substituted, like `NGINX_ENVSUBST_FILTER=^EDGE_` in the image.
pub const PREFIX: &str = "EDGE_";
/// Template file suffix, stripped from the output name (the image's `NGINX_ENVSUBST_TEMPLATE_SUFFIX`).
pub const SUFFIX: &str = ".template";

/// How long nginx may take to accept connections, and to exit after SIGTERM.
const START_DEADLINE: Duration = Duration::from_secs(15);
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// `conf/nginx` in the source tree.
pub fn conf_dir() -> PathBuf {
    workspace_root().join("conf/nginx")
}

/// The shipped defaults, `conf/nginx/edge.env` (`NAME=value` lines; `#` comments).
pub fn default_vars() -> BTreeMap<String, String> {
    let text = fs::read_to_string(conf_dir().join("edge.env")).expect("reading conf/nginx/edge.env");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.split_once('=').unwrap_or_else(|| panic!("edge.env: not NAME=value: {l:?}"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// Every `EDGE_` variable a template text references, as `$NAME` or `${NAME}`.
pub fn referenced_vars(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let body = rest.strip_prefix('{').unwrap_or(rest);
        let len = name_len(body);
        if len > 0 && body.starts_with(PREFIX) {
            names.push(body[..len].to_owned());
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Length of the shell-style name (`[A-Za-z_][A-Za-z0-9_]*`) at the start of `s`, 0 if none.
fn name_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    if bytes.first().is_none_or(|b| !(b.is_ascii_alphabetic() || *b == b'_')) {
        return 0;
    }
    bytes.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count()
}

/// Renders one line (without its newline) like render.sh's awk program. Problems are pushed as
/// "`LOCATION`: NAME is not set" / "`LOCATION`: unterminated ${NAME".
fn render_line(line: &str, vars: &BTreeMap<String, String>, location: &str, problems: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after_dollar = &rest[i + 1..];
        let braced = after_dollar.starts_with('{');
        let body = if braced { &after_dollar[1..] } else { after_dollar };
        let len = name_len(body);
        if len > 0 && body.starts_with(PREFIX) {
            let name = &body[..len];
            let after = &body[len..];
            if braced && !after.starts_with('}') {
                problems.push(format!("{location}: unterminated ${{{name}"));
                out.push('$');
                rest = after_dollar;
                continue;
            }
            match vars.get(name).filter(|v| !v.is_empty()) {
                Some(value) => out.push_str(value),
                None => problems.push(format!("{location}: {name} is not set")),
            }
            rest = if braced { &after[1..] } else { after };
            continue;
        }
        out.push('$');
        rest = after_dollar;
    }
    out.push_str(rest);
    out
}

/// Renders every `*.template` under `template_dir` into `output_dir` (same relative path, suffix stripped),
/// substituting the `EDGE_` variables of `vars` (others are ignored, like variables the filter rejects).
/// Checks every template before writing anything: on an unset or empty variable it writes nothing and
/// returns the problems, one per line, in render.sh's format. Returns the written paths.
pub fn render(template_dir: &Path, output_dir: &Path, vars: &BTreeMap<String, String>) -> Result<Vec<PathBuf>, String> {
    let vars: BTreeMap<String, String> =
        vars.iter().filter(|(k, _)| k.starts_with(PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut templates = Vec::new();
    collect_templates(template_dir, &mut templates);
    templates.sort();
    if templates.is_empty() {
        return Err(format!("no *{SUFFIX} files in {}", template_dir.display()));
    }
    let mut problems = Vec::new();
    let mut rendered = Vec::new();
    for template in &templates {
        let text = fs::read_to_string(template).unwrap_or_else(|e| panic!("reading {}: {e}", template.display()));
        let mut out = String::new();
        // awk semantics: records split on \n, each printed with a \n.
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let location = format!("{}:{}", template.display(), n + 1);
            out.push_str(&render_line(line.strip_suffix('\n').unwrap_or(line), &vars, &location, &mut problems));
            out.push('\n');
        }
        let relative = template.strip_prefix(template_dir).expect("template under its directory");
        let name = relative.to_str().expect("UTF-8 path").strip_suffix(SUFFIX).expect("template suffix");
        rendered.push((output_dir.join(name), out));
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    for (path, text) in &rendered {
        fs::create_dir_all(path.parent().expect("output parent")).expect("creating the output directory");
        fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    Ok(rendered.into_iter().map(|(p, _)| p).collect())
}

fn collect_templates(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_templates(&path, out);
        } else if path.to_string_lossy().ends_with(SUFFIX) {
            out.push(path);
        }
    }
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())).flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}

/// What to run nginx with besides the shipped defaults.
#[derive(Clone, Debug, Default)]
pub struct EdgeOptions {
    /// Variables replacing the defaults (and the test's own listen/upstream/paths values).
    pub vars: Vec<(String, String)>,
    /// Variables to remove before rendering (to show what a missing one does).
    pub unset: Vec<String>,
    /// Also render the TLS variant, with a self-signed certificate made by `openssl`.
    pub tls: bool,
}

impl EdgeOptions {
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn unset(mut self, name: &str) -> Self {
        self.unset.push(name.to_owned());
        self
    }

    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// A running nginx.
pub struct Nginx {
    child: Option<Child>,
    pub pid: i32,
    /// The plain-HTTP port on 127.0.0.1.
    pub port: u16,
    /// The TLS port on 127.0.0.1, with [`EdgeOptions::tls`].
    pub tls_port: Option<u16>,
    /// The variables the configuration was rendered with.
    pub vars: BTreeMap<String, String>,
    pub dir: TempDir,
}

impl Nginx {
    /// Renders the configuration for an upstream (`host:port`) and starts nginx; panics if it cannot start.
    pub fn start(upstream: &str, options: EdgeOptions) -> Nginx {
        Nginx::try_start(upstream, options).unwrap_or_else(|e| panic!("rendering the edge configuration: {e}"))
    }

    /// Like [`Nginx::start`], but a rendering failure is returned (and nginx is never started).
    pub fn try_start(upstream: &str, options: EdgeOptions) -> Result<Nginx, String> {
        let bin = &provision::tools().nginx;
        let dir = TempDir::new("edge");
        let port = free_port();
        let conf = dir.join("conf");
        for sub in ["conf", "logs", "temp"] {
            fs::create_dir_all(dir.join(sub)).expect("creating the nginx prefix");
        }
        copy_tree(&conf_dir().join("site"), &dir.join("site"));
        copy_tree(&conf_dir().join("snippets"), &conf.join("snippets"));
        fs::copy(conf_dir().join("nginx.conf"), conf.join("nginx.conf")).expect("copying nginx.conf");
        // The image ships its own mime.types beside nginx.conf; Debian's nginx-common installs the same file.
        fs::copy("/etc/nginx/mime.types", conf.join("mime.types"))
            .expect("copying /etc/nginx/mime.types (installed with Debian's nginx)");

        let mut vars = default_vars();
        let local = |name: &str| dir.join(name).to_string_lossy().into_owned();
        vars.insert("EDGE_LISTEN".into(), format!("127.0.0.1:{port}"));
        vars.insert("EDGE_API_UPSTREAM".into(), upstream.to_owned());
        // Never queried: the upstream is an address. nginx only needs a valid one.
        vars.insert("EDGE_RESOLVER".into(), "127.0.0.1".into());
        vars.insert("EDGE_STATIC_ROOT".into(), local("site"));
        vars.insert("EDGE_ACCESS_LOG".into(), local("logs/access.log"));

        let templates = dir.join("templates");
        copy_tree(&conf_dir().join("templates"), &templates);
        let tls_port = if options.tls {
            let tls_port = free_port();
            let (cert, key) = self_signed_cert(&dir);
            fs::copy(conf_dir().join("tls/https.conf.template"), templates.join("https.conf.template"))
                .expect("copying the TLS template");
            vars.insert("EDGE_TLS_LISTEN".into(), format!("127.0.0.1:{tls_port}"));
            vars.insert("EDGE_TLS_CERT".into(), cert.to_string_lossy().into_owned());
            vars.insert("EDGE_TLS_KEY".into(), key.to_string_lossy().into_owned());
            Some(tls_port)
        } else {
            None
        };
        for (name, value) in &options.vars {
            vars.insert(name.clone(), value.clone());
        }
        for name in &options.unset {
            vars.remove(name);
        }
        render(&templates, &conf.join("edge.d"), &vars)?;

        // Temp paths are http-level directives (not settable with -g): one more include, test-only.
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("{t}_temp_path {};\n", local(&format!("temp/{t}"))))
            .collect();
        fs::write(conf.join("edge.d/test-paths.conf"), temp_paths).expect("writing test-paths.conf");

        let stderr = fs::File::create(dir.join("logs/stderr.log")).expect("creating stderr.log");
        let globals = format!("daemon off; pid {}; error_log {} notice;", local("nginx.pid"), local("logs/error.log"));
        let child = Command::new(bin)
            .arg("-p")
            .arg(format!("{}/", dir.path().display()))
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(conf.join("nginx.conf"))
            .arg("-g")
            .arg(globals)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("cloning a file handle"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let pid = child.id() as i32;
        let mut nginx = Nginx { child: Some(child), pid, port, tls_port, vars, dir };
        nginx.wait_listening();
        Ok(nginx)
    }

    fn wait_listening(&mut self) {
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        let up = poll(START_DEADLINE, POLL_INTERVAL, || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("polling nginx")) {
                self.child = None;
                panic!("nginx exited during startup ({status}):\n{}\n{}", self.stderr(), self.error_log());
            }
            ports
                .iter()
                .all(|p| {
                    let addr = SocketAddr::from(([127, 0, 0, 1], *p));
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
                .then_some(())
        });
        assert!(up.is_some(), "nginx did not listen within {START_DEADLINE:?}:\n{}", self.error_log());
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port.expect("started with the TLS variant")))
    }

    /// The value a variable was rendered with.
    pub fn var(&self, name: &str) -> &str {
        self.vars.get(name).map(String::as_str).unwrap_or_else(|| panic!("{name} was not rendered"))
    }

    /// A rendered file, e.g. `edge.d/edge.conf`.
    pub fn rendered(&self, relative: &str) -> String {
        fs::read_to_string(self.dir.join("conf").join(relative)).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("logs/stderr.log")).unwrap_or_default()
    }

    /// The JSON access log lines written so far.
    pub fn access_log(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("logs/access.log")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}"))).collect()
    }

    /// Waits for the access log line of a request id (nginx writes it after the response).
    pub fn wait_access_log(&self, request_id: &str) -> Value {
        wait_for(Duration::from_secs(5), &format!("the edge access log line of {request_id}"), || {
            self.access_log().into_iter().find(|l| l["request_id"] == request_id)
        })
    }

    /// Stops nginx: SIGTERM (fast shutdown), then SIGKILL of the master and its workers after a deadline.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let workers = children(self.pid);
        crate::process::stop(&mut child, libc::SIGTERM, STOP_DEADLINE);
        for w in workers {
            if alive(w) {
                signal(w, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("nginx stderr:\n{}\nnginx error log:\n{}", self.stderr(), self.error_log());
        }
        self.stop();
    }
}

/// A self-signed certificate for 127.0.0.1 / localhost, made with `openssl` in `dir`: (cert, key).
pub fn self_signed_cert(dir: &TempDir) -> (PathBuf, PathBuf) {
    let cert = dir.join("tls-cert.pem");
    let key = dir.join("tls-key.pem");
    let output = Command::new(&provision::tools().openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running openssl: {e}"));
    assert!(output.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&output.stderr));
    (cert, key)
}

/// Sends one raw HTTP/1.1 request over TLS with `openssl s_client` (the tests have no TLS library) and
/// returns the raw response bytes. The request should carry `Connection: close`.
pub fn tls_exchange(addr: SocketAddr, request: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut child = Command::new(&provision::tools().openssl)
        .args(["s_client", "-quiet", "-connect", &addr.to_string(), "-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("running openssl s_client: {e}"));
    child.stdin.take().expect("stdin").write_all(request.as_bytes()).expect("writing the request");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    if poll(Duration::from_secs(15), POLL_INTERVAL, || child.try_wait().expect("polling openssl")).is_none() {
        signal(child.id() as i32, libc::SIGKILL);
        let _ = child.wait();
        panic!("openssl s_client did not finish within 15 s");
    }
    reader.join().expect("reader thread")
}
