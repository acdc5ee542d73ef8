//! The one accept loop every TCP listener of the sidecar runs: inbound
//! (4143), upstream and DNS-made outbound listeners, capture (4140), admin
//! (4191) and the DNS server's TCP side.
//!
//! What it does for all of them, in one place:
//! - **a connection limit**: a full listener still accepts, and closes the
//!   new connection at once with a reset: the client learns in a round
//!   trip that it must go elsewhere or retry, where waiting in the
//!   kernel's backlog would hold it until its own connect timeout (and
//!   let a flood of idle connections queue every newcomer behind it);
//!   `bulkhead_limit_exceeded_total{listener, limit="connections"}`
//!   counts them;
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
use crate::limits::{self, Limit};

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
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    let draining = async {
        match &drain {
            Some(drain) => drain.signaled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(draining);
    loop {
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
        let Ok(permit) = room.clone().try_acquire_owned() else {
            refuse(stream, name, max_connections);
            continue;
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

/// Closes a connection over the listener's limit with a reset (no
/// TIME-WAIT left here, and the client knows at once), and counts it.
#[cold]
fn refuse(stream: TcpStream, listener: &'static str, max_connections: usize) {
    let _ = stream.set_zero_linger();
    drop(stream);
    limits::exceeded(listener, Limit::Connections);
    tracing::debug!(
        listener,
        max_connections,
        "listener full: connection refused"
    );
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
    async fn at_the_limit_new_connections_are_refused_at_once() {
        let (listener, addr) = bound(2).await;
        let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let drain = Drain::new();
        let (o, m) = (open.clone(), most.clone());
        tokio::spawn(serve(listener, Some(drain.clone()), move |s, _| {
            hold(s, o.clone(), m.clone())
        }));
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut greeting = [0; 2];
        for c in &mut clients {
            c.read_exact(&mut greeting).await.unwrap();
        }
        // The third is closed with a reset, not left waiting.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(5), third.read(&mut greeting))
            .await
            .expect("refused at once, not held");
        assert!(
            matches!(refused, Ok(0) | Err(_)),
            "a third connection was served over the limit: {refused:?}"
        );
        // Room again once one ends.
        drop(clients.remove(0));
        let served = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut next = TcpStream::connect(addr).await.unwrap();
                if next.read_exact(&mut greeting).await.is_ok() {
                    return next;
                }
            }
        })
        .await
        .expect("served once there is room");
        assert_eq!(most.load(Ordering::SeqCst), 2);
        drop((clients, served));
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
