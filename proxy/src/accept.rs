//! The one accept loop every TCP listener of the sidecar runs: inbound
//! (4143), upstream and DNS-made outbound listeners, capture (4140), admin
//! (4191) and the DNS server's TCP side.
//!
//! What it does for all of them, in one place:
//! - **a connection limit**: it waits for room before accepting, so a full
//!   listener leaves new connections in the kernel's backlog (where the
//!   client's connect timeout applies) instead of taking and dropping them;
//!   `bulkhead_listener_saturated_total{listener}` counts the waits;
//! - **a span per connection** (`conn`, with the listener, the peer address
//!   and the local port) that the connection's future is instrumented
//!   with, so every log line of a connection names it; handlers add the
//!   peer's identity to it once they know it;
//! - **drain**: it stops accepting when draining begins, and connection
//!   tasks are tracked so that shutdown waits for them;
//! - **error backoff**: an accept error (out of descriptors, say) waits
//!   with [`Backoff`] instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_process::Backoff;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::drain::Drain;

/// A bound listener and how many connections it may hold at once.
pub(crate) struct Listener {
    /// The `listener` label and span field: `inbound`, `outbound`, ...
    pub(crate) name: &'static str,
    pub(crate) tcp: TcpListener,
    pub(crate) max_connections: usize,
}

impl Listener {
    pub(crate) fn new(name: &'static str, tcp: TcpListener, max_connections: usize) -> Self {
        Self {
            name,
            tcp,
            max_connections,
        }
    }

    /// The address bound (with the port chosen, for port 0).
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Accepts until `drain` signals (forever with `None`: the admin port keeps
/// answering probes while the rest drains), handing each connection to
/// `handle` in a task of its own.
pub(crate) async fn serve<H, Fut>(listener: Listener, drain: Option<Drain>, handle: H)
where
    H: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Listener {
        name,
        tcp,
        max_connections,
    } = listener;
    let port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
    let room = Arc::new(Semaphore::new(max_connections.max(1)));
    let saturated = metrics::counter!("bulkhead_listener_saturated_total", "listener" => name);
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    let draining = async {
        match &drain {
            Some(drain) => drain.signaled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(draining);
    loop {
        let permit = match room.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                saturated.increment(1);
                tracing::debug!(
                    listener = name,
                    max_connections,
                    "listener full; waiting for a connection to end"
                );
                tokio::select! {
                    permit = room.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return, // never closed
                    },
                    () = &mut draining => return,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => {
                    backoff.reset();
                    accepted
                }
                Err(error) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(listener = name, %error, ?retry_in, "accept failed; retrying");
                    tokio::time::sleep(retry_in).await;
                    continue;
                }
            },
            () = &mut draining => return,
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!(
            "conn",
            listener = name,
            %peer,
            port,
            identity = tracing::field::Empty,
        );
        let connection = handle(stream, peer).instrument(span);
        let task = async move {
            connection.await;
            drop(permit);
        };
        match &drain {
            Some(drain) => drain.spawn(task),
            None => {
                tokio::spawn(task);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn bound(max: usize) -> (Listener, SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        (Listener::new("test", tcp, max), addr)
    }

    /// Each connection is held open until its client closes it.
    async fn hold(mut stream: TcpStream, open: Arc<AtomicUsize>, most: Arc<AtomicUsize>) {
        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        let _ = stream.write_all(b"hi").await;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        open.fetch_sub(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn at_the_limit_new_connections_wait_in_the_backlog() {
        let (listener, addr) = bound(2).await;
        let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let drain = Drain::new();
        let (o, m) = (open.clone(), most.clone());
        tokio::spawn(serve(listener, Some(drain.clone()), move |s, _| {
            hold(s, o.clone(), m.clone())
        }));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut greeting = [0; 2];
        for c in &mut clients[..2] {
            c.read_exact(&mut greeting).await.unwrap();
        }
        // The third is connected (backlog) but not served until one ends.
        let third = tokio::time::timeout(
            Duration::from_millis(200),
            clients[2].read_exact(&mut greeting),
        )
        .await;
        assert!(
            third.is_err(),
            "a third connection was served over the limit"
        );
        drop(clients.remove(0));
        clients[1].read_exact(&mut greeting).await.unwrap();
        assert_eq!(most.load(Ordering::SeqCst), 2);
        drop(clients);
        assert!(drain.drain(Duration::from_secs(5)).await);
        assert_eq!(open.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn draining_stops_accepting_and_waits_for_connections() {
        let (listener, addr) = bound(8).await;
        let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let drain = Drain::new();
        let (o, m) = (open.clone(), most.clone());
        let accepting = tokio::spawn(serve(listener, Some(drain.clone()), move |s, _| {
            hold(s, o.clone(), m.clone())
        }));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut greeting = [0; 2];
        client.read_exact(&mut greeting).await.unwrap();
        let draining = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drain(Duration::from_secs(5)).await }
        });
        accepting.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
        assert!(
            !draining.is_finished(),
            "did not wait for the open connection"
        );
        drop(client);
        assert!(draining.await.unwrap());
    }
}
