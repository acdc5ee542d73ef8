//! Listeners made on demand for the DNS server: each mesh service gets a
//! loopback address of its own (127.77.0.1, 127.77.0.2, ... in the order
//! names are first asked for) with a listener on each of its declared
//! ports, which route exactly as an `--upstream` would.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use super::{Outbound, Target};
use crate::accept::Listener;
use crate::drain::Drain;
use crate::state::ServiceKey;

pub(crate) struct MeshListeners {
    outbound: Arc<Outbound>,
    drain: Drain,
    inner: Mutex<ListenerTable>,
}

#[derive(Default)]
struct ListenerTable {
    /// Service → its loopback address and the ports bound on it.
    services: HashMap<ServiceKey, (Ipv4Addr, BTreeSet<u16>)>,
    next: u32,
}

/// Most services one sidecar makes listeners for (one /16 of loopback).
const MAX_DYNAMIC_SERVICES: u32 = 65_000;

impl MeshListeners {
    pub(crate) fn new(outbound: Arc<Outbound>, drain: Drain) -> Self {
        Self {
            outbound,
            drain,
            inner: Mutex::default(),
        }
    }

    /// The loopback address for `namespace/service`, binding listeners for
    /// any declared port not yet bound. `None` when the mesh has no such
    /// Service (or addresses ran out).
    pub(crate) fn lookup(&self, service: &str, namespace: &str) -> Option<IpAddr> {
        let key = (namespace.to_owned(), service.to_owned());
        let (ports, subscribed): (Vec<u16>, bool) = {
            let state = self.outbound.states.load();
            let svc = state.view(&key)?.service.as_ref()?;
            let ports = svc.spec.ports.iter().map(|p| p.port).collect();
            (ports, state.is_subscribed(&key))
        };
        if !subscribed {
            // The app will call it next: have its endpoints on the way.
            self.outbound.subscriptions.want(&key);
        }
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let ip = match table.services.get(&key) {
            Some((ip, _)) => *ip,
            None => {
                if table.next >= MAX_DYNAMIC_SERVICES {
                    tracing::warn!(
                        service,
                        namespace,
                        "no loopback addresses left for DNS-addressed services"
                    );
                    return None;
                }
                table.next += 1;
                let n = table.next;
                let ip = Ipv4Addr::new(127, 77, (n >> 8) as u8, (n & 0xff) as u8);
                table.services.insert(key.clone(), (ip, BTreeSet::new()));
                ip
            }
        };
        let bound = &mut table.services.get_mut(&key)?.1;
        for port in ports {
            if bound.contains(&port) {
                continue;
            }
            let addr = SocketAddr::from((ip, port));
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std);
            match listener {
                Ok(listener) => {
                    bound.insert(port);
                    tracing::info!(%addr, service, namespace, "listening for a DNS-addressed service");
                    let listener =
                        Listener::new("outbound", listener, self.outbound.limits.max_connections);
                    let target = Target::new(key.clone(), Some(port));
                    self.drain.spawn(super::serve(
                        listener,
                        target,
                        self.outbound.clone(),
                        self.drain.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%addr, %error, "cannot listen for a DNS-addressed service")
                }
            }
        }
        Some(IpAddr::V4(ip))
    }
}

impl crate::dns::MeshNames for MeshListeners {
    fn lookup(&self, service: &str, namespace: &str) -> Option<IpAddr> {
        MeshListeners::lookup(self, service, namespace)
    }
}
