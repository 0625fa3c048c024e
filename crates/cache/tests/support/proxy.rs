//! A TCP proxy on loopback that can cut its link: while cut, every open connection is
//! closed and new ones are closed as soon as they are accepted. An outage of whatever
//! is behind it, as its clients see one.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy in front of one address.
pub struct Proxy {
    pub address: SocketAddr,
    /// `true` while cut; every connection watches it.
    cut: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let address = listener.local_addr().expect("address");
        let (cut, _) = watch::channel(false);
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = state.subscribe();
                if *cut.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { address, cut }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}
