//! HTTP/1.1 over `tokio-pvm`: hyper's server and client on a [`ByteStream`].
//!
//! ```text
//! cargo run --example http                                          # demo, see below
//! cargo run --example http -- serve SOCKET_PATH
//! cargo run --example http -- get SOCKET_PATH [TARGET]
//! cargo run --example http -- post SOCKET_PATH [TARGET] [--size BYTES]
//! ```
//!
//! - `serve` binds a listener at `SOCKET_PATH` and serves HTTP/1.1 on every connection, each
//!   in a task of its own, until Ctrl-C or SIGTERM (then the socket file is removed). Routes:
//!   `GET /` answers with a greeting; `POST /echo` answers with the request body and an
//!   `x-body-size` header holding its length; other methods on these paths get 405, other
//!   paths 404.
//! - `get` connects (waiting up to five seconds for a listener to appear), sends
//!   `GET TARGET` (default `/`) and prints the status line, the headers and the body.
//! - `post` sends `POST TARGET` (default `/echo`) with a body of `BYTES` bytes (default 1024;
//!   byte `i` is `i % 251`), prints the status, the size that came back and whether it is
//!   the body that was sent, and the time the exchange took.
//! - Without arguments: a demo. It starts the server as a child process (this executable,
//!   re-executed with `serve` and a temporary socket path), waits for its socket, sends a few
//!   requests on one keep-alive connection (GET /, POST /echo with bodies from 0 B to
//!   8 MiB, a path that does not exist), prints what came back, and stops the child with
//!   SIGTERM.
//!
//! The client ends with exit code 1 if the server answers with a status other than 2xx or the
//! echo differs; bad usage exits with 2.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/connect.rs"]
mod connect;
#[path = "common/fmt.rs"]
mod fmt;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ALLOW, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};
use tokio_pvm::{ByteStream, Config, Connection};

use fmt::grouped;

const USAGE: &str = "\
usage: http
       http serve SOCKET_PATH
       http get SOCKET_PATH [TARGET]
       http post SOCKET_PATH [TARGET] [--size BYTES]

HTTP/1.1 (hyper) over tokio-pvm. Without arguments, runs a demo: starts `http serve` as a
child process on a temporary socket, makes a few requests and stops it.

serve  serves GET / (a greeting) and POST /echo (the request body back, its length in the
       x-body-size header) at SOCKET_PATH until Ctrl-C or SIGTERM.
get    sends GET TARGET (default /) and prints the response.
post   sends POST TARGET (default /echo) with a body of BYTES bytes (default 1024) and checks
       that the same bytes come back.";

/// Response header with the length of the request body `POST /echo` received.
const SIZE_HEADER: &str = "x-body-size";

/// How long the demo waits for the server to start or to stop, and for any one response.
const WAIT: Duration = Duration::from_secs(30);

enum Args {
    Demo,
    Serve {
        path: PathBuf,
    },
    Get {
        path: PathBuf,
        target: String,
    },
    Post {
        path: PathBuf,
        target: String,
        size: usize,
    },
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        return Ok(Args::Demo);
    };
    let mut positional = Vec::new();
    let mut size = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--size" => {
                let value = args.next().ok_or("--size needs a value")?;
                let n = value
                    .parse::<usize>()
                    .map_err(|_| format!("--size: {value:?} is not a valid number"))?;
                size = Some(n);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ => positional.push(arg),
        }
    }
    if size.is_some() && command != "post" {
        return Err("--size only goes with post".to_string());
    }
    let mut positional = positional.into_iter();
    let path = positional.next().map(PathBuf::from);
    let target = positional.next();
    if let Some(extra) = positional.next() {
        return Err(format!("unexpected argument {extra}"));
    }
    let need_path = || {
        path.clone()
            .ok_or_else(|| "SOCKET_PATH is missing".to_string())
    };
    let check_target = |target: Option<String>, default: &str| -> Result<String, String> {
        let target = target.unwrap_or_else(|| default.to_string());
        if target.starts_with('/') {
            Ok(target)
        } else {
            Err(format!("TARGET must start with '/', got {target:?}"))
        }
    };
    match command.as_str() {
        "serve" if target.is_some() => Err("serve takes only SOCKET_PATH".to_string()),
        "serve" => Ok(Args::Serve { path: need_path()? }),
        "get" => Ok(Args::Get {
            path: need_path()?,
            target: check_target(target, "/")?,
        }),
        "post" => Ok(Args::Post {
            path: need_path()?,
            target: check_target(target, "/echo")?,
            size: size.unwrap_or(1024),
        }),
        other => Err(format!("unknown command {other:?}")),
    }
}

async fn run(args: Args) -> Result<(), String> {
    match args {
        Args::Demo => demo().await,
        Args::Serve { path } => serve(&path).await,
        Args::Get { path, target } => {
            let mut client = Client::connect(&path).await?;
            let reply = client.request(Method::GET, &target, Bytes::new()).await?;
            println!("HTTP/1.1 {}", reply.status);
            for (name, value) in &reply.headers {
                println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
            }
            println!();
            print!("{}", String::from_utf8_lossy(&reply.body));
            client.close().await?;
            reply.require_success()
        }
        Args::Post { path, target, size } => {
            let mut client = Client::connect(&path).await?;
            let checked = post(&mut client, &target, size).await;
            client.close().await?;
            checked
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::main("http", USAGE, parse_args, run).await
}

// ---- server -----------------------------------------------------------------------------

/// Serves every connection accepted at `path` until Ctrl-C or SIGTERM.
async fn serve(path: &Path) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("watching for SIGTERM: {e}"))?;
    let listener = tokio_pvm::Listener::bind(path)
        .map_err(|e| format!("listening at {}: {e}", path.display()))?;
    eprintln!(
        "http server (pid {}): serving HTTP/1.1 at {}; stop with Ctrl-C or SIGTERM",
        std::process::id(),
        path.display()
    );
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    connections.spawn(serve_connection(conn));
                }
                Err(e) => {
                    // A problem of the listening socket (such as no file descriptors left);
                    // accepting may be retried.
                    eprintln!("http server: accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next() => {
                if let Err(e) = done {
                    eprintln!("http server: connection task failed: {e}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    eprintln!(
        "http server: stopping ({} connections open)",
        connections.len()
    );
    // Dropping the listener removes the socket file; dropping the JoinSet ends the
    // connections still open.
    Ok(())
}

/// Serves HTTP/1.1 on one connection until the client closes it.
async fn serve_connection(conn: Connection) {
    let peer = conn.peer().clone();
    let io = TokioIo::new(ByteStream::new(conn));
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, hyper::service::service_fn(handle))
        .await;
    if let Err(e) = served {
        eprintln!("http server: connection from {peer}: {e}");
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    Ok(match (method, path.as_str()) {
        (Method::GET, "/") => text(
            StatusCode::OK,
            format!(
                "hello from tokio-pvm: HTTP/1.1 over process_vm_readv, served by process {}\n",
                std::process::id()
            ),
        ),
        (Method::POST, "/echo") => {
            let body = req.into_body().collect().await?.to_bytes();
            let size = body.len();
            let mut resp = Response::new(Full::new(body));
            let headers = resp.headers_mut();
            headers.insert(SIZE_HEADER, HeaderValue::from(size));
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        (method, "/" | "/echo") => {
            let allow = if path == "/" { "GET" } else { "POST" };
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} does not take {method}; use {allow}\n"),
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            resp
        }
        (method, _) => text(
            StatusCode::NOT_FOUND,
            format!("no route for {method} {path}; try GET / or POST /echo\n"),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

// ---- client -----------------------------------------------------------------------------

/// One HTTP/1.1 connection; requests go one after another on it (keep-alive).
struct Client {
    sender: SendRequest<Full<Bytes>>,
    /// hyper's connection future: it does the reading and writing, so it runs in a task.
    driver: JoinHandle<Result<(), hyper::Error>>,
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    elapsed: Duration,
}

impl Reply {
    fn require_success(&self) -> Result<(), String> {
        if self.status.is_success() {
            Ok(())
        } else {
            Err(format!("the server answered {}", self.status))
        }
    }
}

impl Client {
    /// Connects to the listener at `path`, waiting for it to appear, and starts HTTP/1.1.
    async fn connect(path: &Path) -> Result<Client, String> {
        let conn = connect::connect(path, Config::new())
            .await
            .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
        let io = TokioIo::new(ByteStream::new(conn));
        let (sender, driver) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("starting HTTP/1.1: {e}"))?;
        Ok(Client {
            sender,
            driver: tokio::spawn(driver),
        })
    }

    async fn request(
        &mut self,
        method: Method,
        target: &str,
        body: Bytes,
    ) -> Result<Reply, String> {
        let what = format!("{method} {target}");
        let req = Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, "tokio-pvm")
            .body(Full::new(body))
            .map_err(|e| format!("{what}: building the request: {e}"))?;
        let started = Instant::now();
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("{what}: the connection is gone: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("{what}: reading the response body: {e}"))?
                .to_bytes();
            Ok::<_, String>(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
                elapsed: started.elapsed(),
            })
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .map_err(|_| format!("{what}: no response within {WAIT:?}"))?
    }

    /// Closes the connection: hyper shuts it down once the last sender is gone.
    async fn close(self) -> Result<(), String> {
        drop(self.sender);
        match tokio::time::timeout(WAIT, self.driver).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("closing the connection: {e}")),
            Ok(Err(e)) => Err(format!("the connection task failed: {e}")),
            Err(_) => Err(format!("the connection did not close within {WAIT:?}")),
        }
    }
}

/// Body of `size` bytes for `post`: byte `i` is `i % 251`.
fn post_body(size: usize) -> Bytes {
    (0..size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Sends `POST target` with a `size`-byte body and checks the echo; prints one line.
async fn post(client: &mut Client, target: &str, size: usize) -> Result<(), String> {
    let body = post_body(size);
    let reply = client.request(Method::POST, target, body.clone()).await?;
    let reported = reply
        .headers
        .get(SIZE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    if !reply.status.is_success() {
        println!(
            "POST {target:<9} {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim_end()
        );
        return reply.require_success();
    }
    let intact = reply.body == body;
    println!(
        "POST {target:<9} {:<16} sent {:>10} B, got {:>10} B back ({SIZE_HEADER}: {reported}), {}, {:.1} ms",
        reply.status.to_string(),
        grouped(size),
        grouped(reply.body.len()),
        if intact {
            "echo intact"
        } else {
            "ECHO DIFFERS"
        },
        reply.elapsed.as_secs_f64() * 1e3,
    );
    if !intact {
        return Err(format!(
            "the {} bytes that came back are not the {size} bytes sent",
            reply.body.len()
        ));
    }
    Ok(())
}

// ---- demo -------------------------------------------------------------------------------

/// Starts `serve` as a child process, makes a few requests and stops the child.
async fn demo() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let path = std::env::temp_dir().join(format!("tokio-pvm-http-{}.sock", std::process::id()));
    let mut child = tokio::process::Command::new(&exe)
        .arg("serve")
        .arg(&path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the server {}: {e}", exe.display()))?;
    let pid = child
        .id()
        .ok_or("the server exited as soon as it started")?;
    println!(
        "demo: started the server as process {pid} at {}; this client is process {}",
        path.display(),
        std::process::id()
    );

    let requests = tokio::select! {
        result = requests(&path) => result,
        status = child.wait() => Err(match status {
            Ok(status) => format!("the server (process {pid}) exited early ({status})"),
            Err(e) => format!("waiting for the server (process {pid}): {e}"),
        }),
    };
    let stopped = stop(&mut child, pid).await;
    requests?;
    stopped?;
    if path.exists() {
        return Err(format!(
            "the server left its socket file {} behind",
            path.display()
        ));
    }
    println!("demo: the server stopped cleanly and removed its socket");
    Ok(())
}

/// The demo's requests, all on one keep-alive connection.
async fn requests(path: &Path) -> Result<(), String> {
    let mut client = Client::connect(path).await?;
    println!("demo: connected; every request below goes over this one connection");

    let reply = client.request(Method::GET, "/", Bytes::new()).await?;
    println!(
        "GET  {:<9} {:<16} {:?}",
        "/",
        reply.status.to_string(),
        String::from_utf8_lossy(&reply.body).trim_end()
    );
    reply.require_success()?;

    for size in [0, 1 << 10, 1 << 20, 8 << 20] {
        post(&mut client, "/echo", size).await?;
    }

    let reply = client.request(Method::GET, "/nope", Bytes::new()).await?;
    println!(
        "GET  {:<9} {:<16} {:?}",
        "/nope",
        reply.status.to_string(),
        String::from_utf8_lossy(&reply.body).trim_end()
    );
    if reply.status != StatusCode::NOT_FOUND {
        return Err(format!("GET /nope: expected 404, got {}", reply.status));
    }

    client.close().await?;
    println!("demo: closed the connection");
    Ok(())
}

/// Stops the server child with SIGTERM (SIGKILL if it does not exit in time).
async fn stop(child: &mut tokio::process::Child, pid: u32) -> Result<(), String> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(Some(status)) = child.try_wait() {
        return Err(format!(
            "the server (process {pid}) had already exited ({status})"
        ));
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
        .map_err(|e| format!("sending SIGTERM to the server (process {pid}): {e}"))?;
    match tokio::time::timeout(WAIT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the server (process {pid}) failed ({status})")),
        Ok(Err(e)) => Err(format!("waiting for the server (process {pid}): {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!(
                "the server (process {pid}) did not stop within {WAIT:?} of SIGTERM; killed it"
            ))
        }
    }
}
