//! `pvmctl serve`: the Prometheus text format over HTTP, for Prometheus to scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::*;

/// How long a stop waits for the scrapes under way.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a client may take to send a request's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a scrape may take before the request is answered with 503 (the reads go on in
/// the background and the next scrape waits for them).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// The content type of the text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What every request handler needs.
#[derive(Debug)]
struct Scraper {
    dirs: Vec<PathBuf>,
    /// What is read, one scrape at a time: reads run on the blocking pool, so the server
    /// keeps accepting, answering `/-/healthy` and watching signals while a target is slow;
    /// concurrent scrapes queue here instead of piling up reads.
    targets: Arc<tokio::sync::Mutex<Targets>>,
}

/// `pvmctl serve`.
pub(crate) fn serve(dirs: Vec<PathBuf>, args: &ServeArgs) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("starting the runtime: {e}")))?;
    let scraper = Arc::new(Scraper {
        dirs,
        targets: Arc::new(tokio::sync::Mutex::new(Targets::new(args.pids.clone()))),
    });
    rt.block_on(run(scraper, args.listen))
}

async fn run(scraper: Arc<Scraper>, addr: SocketAddr) -> Result<(), Failure> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Failure::new(
            EXIT_FAILURE,
            format!("listening on {addr}: {e}; choose another --listen address or port"),
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("listening on {addr}: {e}")))?;
    // The one line on stdout: where to scrape (with --listen ...:0, the port picked).
    emit(&format!("serving http://{local}/metrics\n"))?;
    let signal_err = |e: io::Error| Failure::new(EXIT_FAILURE, format!("watching signals: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            permit = slots.clone().acquire_owned() => {
                let Ok(permit) = permit else { break };
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: keep serving the connections there are.
                        warn(&format!("accepting a connection: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let scraper = scraper.clone();
                let service = hyper::service::service_fn(move |req| {
                    let scraper = scraper.clone();
                    async move { Ok::<_, Infallible>(respond(scraper, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // A client that goes away mid-request is its own business.
                    let _ = conn.await;
                    drop(permit);
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    tokio::select! {
        done = tokio::time::timeout(STOP_GRACE, graceful.shutdown()) => {
            if done.is_err() {
                warn(&format!(
                    "connections still open {STOP_GRACE:?} after the stop signal were closed"
                ));
            }
        }
        // A second signal: stop now.
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Answers one request.
async fn respond(scraper: Arc<Scraper>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            // The turn goes with the reads: a scrape that outlives its request (timed out) still
            // holds it, and the next one waits for it.
            let targets = scraper.targets.clone().lock_owned().await;
            let started = Instant::now();
            let reads = tokio::task::spawn_blocking({
                let scraper = scraper.clone();
                move || scrape(&scraper.dirs, &targets, started)
            });
            match tokio::time::timeout(SCRAPE_TIMEOUT, reads).await {
                Ok(Ok(text)) => reply(StatusCode::OK, TEXT_FORMAT, text),
                Ok(Err(e)) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("the scrape failed: {e}\n"),
                ),
                Err(_) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "the processes did not answer within {SCRAPE_TIMEOUT:?} (one may be \
                         stuck in the kernel); try again\n"
                    ),
                ),
            }
        }
        (&Method::GET, "/-/healthy") => reply(StatusCode::OK, "text/plain", "OK\n".into()),
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain",
            "pvmctl serve: the metrics are at /metrics\n".into(),
        ),
        (_, "/metrics" | "/-/healthy" | "/") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the metrics are at /metrics\n".into(),
        ),
    }
}

/// Reads every target and renders the text format, with the scrape's own metrics.
fn scrape(dirs: &[PathBuf], targets: &Targets, started: Instant) -> String {
    let (metrics, _named_problem) = collect(dirs, targets);
    let processes = metrics.processes();
    let mut text = metrics.render();
    let _ = writeln!(
        text,
        "# HELP pvmctl_scrape_processes Publishing processes read in this scrape\n\
         # TYPE pvmctl_scrape_processes gauge\n\
         pvmctl_scrape_processes {processes}\n\
         # HELP pvmctl_scrape_duration_seconds Time this scrape took to find and read the \
         processes\n\
         # TYPE pvmctl_scrape_duration_seconds gauge\n\
         pvmctl_scrape_duration_seconds {}",
        started.elapsed().as_secs_f64()
    );
    text
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
