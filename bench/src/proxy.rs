//! A fault proxy for the cluster benchmark: it forwards TCP links between registry
//! nodes and, on command, cuts all of them at once (a partition), like the proxy in
//! `crates/rtalpha/tests/support/proxy.rs`, but on tokio and controlled over HTTP so a
//! script can drive it.
//!
//! While cut, every open connection is closed and every new one is closed as soon as
//! it is accepted, so a node's request to a peer fails at once (it does not wait for
//! its timeout). The control answers `POST /cut`, `POST /pass` and `GET /`, each with
//! `{"cut":bool,"forwarded":N,"refused":N}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What to proxy.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// A link `LISTEN=TARGET`, both `host:port`, e.g. `127.0.0.1:30001=127.0.0.1:30002`;
    /// give one per link.
    #[arg(long = "link", required = true)]
    links: Vec<String>,
    /// Where the control listens.
    #[arg(long)]
    control: SocketAddr,
    /// The proxy stops by itself after this long, so a forgotten one does not linger.
    #[arg(long, default_value = "2h", value_parser = crate::parse_duration)]
    max_run: Duration,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    refused: AtomicU64,
}

/// Parses `LISTEN=TARGET`.
fn parse_link(text: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let Some((listen, target)) = text.split_once('=') else {
        bail!("`{text}`: a link is LISTEN=TARGET");
    };
    let listen = listen.parse().with_context(|| format!("`{listen}` is not host:port"))?;
    let target = target.parse().with_context(|| format!("`{target}` is not host:port"))?;
    Ok((listen, target))
}

/// Serves the links and the control until `max_run` has passed.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let (cut_tx, cut_rx) = watch::channel(false);
    let cut_tx = Arc::new(cut_tx);
    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::new();
    for link in &args.links {
        let (listen, target) = parse_link(link)?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let (cut, counters) = (cut_rx.clone(), counters.clone());
        tasks.push(tokio::spawn(forward(listener, target, cut, counters)));
    }
    let control = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("cannot listen on {}", args.control))?;
    eprintln!("proxy: {} links, control on {}", args.links.len(), args.control);
    let serve_control = async {
        loop {
            let Ok((stream, _)) = control.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (cut_tx, counters) = (cut_tx.clone(), counters.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, cut_tx.clone(), counters.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = serve_control => {}
        () = tokio::time::sleep(args.max_run) => {}
    }
    for task in tasks {
        task.abort();
    }
    Ok(())
}

async fn forward(listener: TcpListener, target: SocketAddr, cut: watch::Receiver<bool>, counters: Arc<Counters>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if *cut.borrow() {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                return;
            };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            // Either side closing ends the link; so does a cut, which drops both sockets.
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    cut: Arc<watch::Sender<bool>>,
    counters: Arc<Counters>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match (request.method(), request.uri().path()) {
        (&Method::POST, "/cut") => {
            cut.send_replace(true);
            StatusCode::OK
        }
        (&Method::POST, "/pass") => {
            cut.send_replace(false);
            StatusCode::OK
        }
        (&Method::GET, "/") => StatusCode::OK,
        _ => StatusCode::NOT_FOUND,
    };
    let body = serde_json::json!({
        "cut": *cut.borrow(),
        "forwarded": counters.forwarded.load(Ordering::Relaxed),
        "refused": counters.refused.load(Ordering::Relaxed),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_links() {
        let (listen, target) = parse_link("127.0.0.1:1=127.0.0.1:2").unwrap();
        assert_eq!((listen.port(), target.port()), (1, 2));
        assert!(parse_link("127.0.0.1:1").is_err());
        assert!(parse_link("a=b").is_err());
    }
}
