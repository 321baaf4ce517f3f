//! A TCP proxy between the server and PostgreSQL that a test can cut and restore, to take the
//! database away without touching the machine's PostgreSQL, or switch to another server, as a
//! DNS name or a Service in front of a primary and its standby does.

use std::{
    net::SocketAddr,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Mutex,
    task::JoinHandle,
};

pub(crate) struct Proxy {
    pub(crate) address: SocketAddr,
    open: Arc<AtomicBool>,
    target: Arc<std::sync::Mutex<SocketAddr>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let target = Arc::new(std::sync::Mutex::new(target));
        let acceptor = tokio::spawn({
            let (open, links, target) = (open.clone(), links.clone(), target.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let target = *target.lock().unwrap_or_else(PoisonError::into_inner);
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().await.push(link);
                }
            }
        });
        Proxy {
            address,
            open,
            target,
            links,
            acceptor,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub(crate) async fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    pub(crate) fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Drops every open connection and sends new ones to `target`.
    pub(crate) async fn switch_to(&self, target: SocketAddr) {
        self.redirect(target);
        self.cut().await;
        self.restore();
    }

    /// Sends new connections to `target`; those open stay where they are, as after a DNS change.
    pub(crate) fn redirect(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = target;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}
