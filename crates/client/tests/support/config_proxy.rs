//! A TCP proxy on loopback that the config client's tests cut and restore: while cut it
//! closes every open connection and every new one at once, as a partition would. A
//! config server stopped in-process cannot stand in for that, because its open
//! server-sent event streams outlive `run`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A proxy in front of one address.
pub struct Proxy {
    pub url: String,
    open: Arc<AtomicBool>,
    /// Cancelled (and replaced) by each cut: the connections opened before it end.
    links: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Forwards to `target` (`host:port`, or an `http://` base URL).
    pub async fn start(target: &str) -> Proxy {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let open = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (accepting, current, stopped) = (open.clone(), links.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                if !accepting.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let link = current.lock().expect("links").clone();
                let target = target.clone();
                tokio::spawn(async move { forward(client, &target, link).await });
            }
        });
        Proxy { url, open, links, stop }
    }

    /// Closes every connection, and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut links = self.links.lock().expect("links");
        links.cancel();
        *links = CancellationToken::new();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.links.lock().expect("links").cancel();
    }
}

async fn forward(mut client: TcpStream, target: &str, link: CancellationToken) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = link.cancelled() => {}
    }
}
