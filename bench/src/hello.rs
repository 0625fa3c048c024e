//! The baseline: a bare hyper 1 HTTP/1.1 server that reads each request body and
//! answers `hello` (or the bytes of a given file, to match the size of the answer
//! it is compared with). It does what any HTTP server must do and nothing else, so
//! a server's rate divided by its rate is the share left after routing, middleware
//! and the server's own work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves until `max_run` has passed (or the process is killed).
pub async fn run(bind: SocketAddr, max_run: Duration, body: Option<Bytes>) -> anyhow::Result<()> {
    let body = body.unwrap_or_else(|| Bytes::from_static(b"hello"));
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    eprintln!("hello: listening on {}", listener.local_addr()?);
    let deadline = tokio::time::sleep(max_run);
    tokio::pin!(deadline);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: keep serving the others.
                Err(err) => {
                    eprintln!("hello: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut deadline => return Ok(()),
        };
        let body = body.clone();
        tokio::spawn(async move {
            // A client that hangs up mid-request is no concern of the baseline's.
            let _ = http1::Builder::new()
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(|request| answer(request, body.clone())),
                )
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as the registry does, so a POST costs both the same on the wire.
    let _ = request.into_body().collect().await;
    Ok(Response::new(Full::new(body)))
}
