//! Serves the app in-process: a tokio runtime on its own threads, a listener on a free loopback port, and
//! hyper's HTTP/1 connection driver calling the app's tower service the way the supervisor's worker runtime
//! does (one service per connection, the app's label hook before each request). Dropping the server shuts
//! the runtime down.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use supervisor::{BootError, Connections, HttpService};

pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// Boots the app (panicking if boot fails) and serves it.
    pub fn start(config: app::Config) -> TestServer {
        TestServer::try_start(config).unwrap_or_else(|e| panic!("boot failed: {e}"))
    }

    pub fn try_start(config: app::Config) -> Result<TestServer, BootError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the runtime");
        let service = runtime.block_on(app::App::boot(config, app::Metrics::private()))?;
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("binding the test listener");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        runtime.spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let service = service.service(peer);
                tokio::spawn(async move {
                    let handler = service_fn(move |req| {
                        let mut service = service.clone();
                        service.label(&req);
                        service.call(req)
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), handler).await;
                });
            }
        });
        Ok(TestServer { base, runtime: Some(runtime) })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
