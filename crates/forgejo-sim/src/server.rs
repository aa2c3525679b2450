//! Wiring: the shared [`App`], the router, and [`SimServer`] (start on a port, shut down).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::middleware;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::SimClock;
use crate::faults::Faults;
use crate::state::State;
use crate::stats::Stats;
use crate::version::ForgejoVersion;
use crate::SimConfig;

/// Everything the handlers share.
#[derive(Debug)]
pub struct App {
    pub version: ForgejoVersion,
    pub clock: SimClock,
    pub stats: Stats,
    pub faults: Faults,
    /// `{AppURL}api/swagger`, the `url` field of error bodies.
    pub swagger_url: String,
    /// `http://ADDR` without a trailing slash.
    pub base_url: String,
    state: Mutex<State>,
}

impl App {
    pub fn new(config: &SimConfig, base_url: String) -> App {
        let app_url = format!("{base_url}/");
        let mut state = State::new(config.version, app_url.clone());
        let clock = SimClock::new(config.time_scale);
        // The admin from the flags; a duplicate name cannot happen in a fresh state.
        let _ = state.create_user(
            &config.admin_user,
            &config.admin_password,
            "",
            true,
            clock.now_ms(),
        );
        App {
            version: config.version,
            clock,
            stats: Stats::default(),
            faults: Faults::default(),
            swagger_url: format!("{app_url}api/swagger"),
            base_url,
            state: Mutex::new(state),
        }
    }

    /// The state lock. A handler that panicked cannot leave the model half-updated in a way
    /// worse than stopping the simulator would, so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .nest("/api/v1", crate::api::router(app.clone()))
        .nest("/api/actions", crate::connect::router(app.clone()))
        .nest("/_sim", crate::control::router(app.clone()))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            crate::stats::count_requests,
        ))
        .with_state(app)
}

/// A running simulator.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    url: String,
    app: Arc<App>,
    shutdown: watch::Sender<bool>,
    serve: JoinHandle<()>,
    scheduler: JoinHandle<()>,
}

impl SimServer {
    /// Binds `listen` (port 0 allowed), starts serving on the current tokio runtime, returns at once.
    pub async fn start(listen: SocketAddr, config: SimConfig) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let app = Arc::new(App::new(&config, url.clone()));
        let (shutdown, rx) = watch::channel(false);
        let service = router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let mut serve_rx = rx.clone();
        let serve = tokio::spawn(async move {
            let graceful = async move {
                let _ = serve_rx.changed().await;
            };
            if let Err(e) = axum::serve(listener, service)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!("server stopped: {e}");
            }
        });
        let scheduler = tokio::spawn(crate::scheduler::run(app.clone(), rx));
        Ok(SimServer {
            addr,
            url,
            app,
            shutdown,
            serve,
            scheduler,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The shared state, for in-process tests that want to look inside.
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Stops accepting, lets in-flight requests finish, stops the scheduler.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.scheduler.await;
        let _ = self.serve.await;
    }
}
