//! `bulkhead-proxy gateway`: the mesh's front door. Outside HTTP/1.1 and
//! HTTP/2 (plain, or TLS from certificate files reloaded when they change)
//! comes in on `--listen`; a `Gateway` resource says what is exposed.
//!
//! A request's path ([`serve`]): outside headers that only the mesh may set
//! (`x-bulkhead-*`) are removed → the route is found ([`routes`]: host, then
//! the longest whole-segment path prefix; none is a 404) → the end user is
//! authenticated as the route asks ([`jwt`], keys from [`jwks`]) → the
//! request takes the ordinary outbound path (split, pin, locality, retries,
//! mTLS as `gateway-<name>`), or is fanned out and merged ([`aggregate`]).
//!
//! The gateway is a mesh workload without an inbound side: it gets a
//! certificate like a sidecar, is pushed its Gateway resource and the
//! services its routes name, and registers no endpoint.

mod aggregate;
mod edge_tls;
mod jwks;
mod jwt;
mod routes;
mod serve;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bulkhead_proto::identity::validate_name;
use bulkhead_proto::model::{Kind, Resource};
use clap::Args;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::accept::Listener;
use crate::admin::{self, Admin};
use crate::config::{Config, RunArgs};
use crate::drain::Drain;
use crate::run::{Exit, MeshClient, bind, keep_metrics_bounded};
use crate::subscriptions::Subscriptions;

#[derive(Debug, Clone, Args)]
pub(crate) struct GatewayArgs {
    /// The Gateway resource (in --namespace) this gateway serves.
    #[arg(long, env = "BULKHEAD_GATEWAY", value_name = "NAME")]
    pub gateway: String,
    /// Where outside clients connect (HTTP/1.1 and HTTP/2).
    #[arg(long, env = "BULKHEAD_GATEWAY_LISTEN", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Serve TLS with this certificate chain (PEM), re-read when it changes.
    #[arg(
        long,
        env = "BULKHEAD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "BULKHEAD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The gateway's own settings; the mesh side is an ordinary [`Config`].
#[derive(Clone, Debug)]
pub(crate) struct GatewayConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Certificate and key files; `None`: plain HTTP (behind a load balancer).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl GatewayArgs {
    /// Checks every value; the workload is `gateway-<name>` unless
    /// `--service`/`--service-account` say otherwise.
    pub(crate) fn into_config(mut self) -> Result<(GatewayConfig, Config), String> {
        validate_name("gateway", &self.gateway).map_err(|e| format!("--gateway: {e}"))?;
        let own = format!("gateway-{}", self.gateway);
        if self.run.service.is_none() {
            self.run.service = Some(own.clone());
        }
        if self.run.service_account.is_none() {
            self.run.service_account = Some(own);
        }
        let tls = self.tls_cert.zip(self.tls_key);
        let config = Config::from_args(self.run)?;
        Ok((
            GatewayConfig {
                name: self.gateway,
                listen: self.listen,
                tls,
            },
            config,
        ))
    }
}

/// What the gateway reads from an outside request before any token is
/// verified, for the fuzz target (`crate::fuzz::gateway_request_head`):
/// the bearer token and its JOSE header, the path as routes match it, and
/// the fields an aggregate keeps.
pub(crate) fn read_untrusted(headers: &http::HeaderMap, path: &str, query: Option<&str>) {
    if let Ok(Some(token)) = jwt::bearer(headers) {
        let _ = jsonwebtoken::decode_header(&token);
    }
    let _ = bulkhead_proto::policy::normalize_path(path);
    let _ = query.and_then(aggregate::fields);
}

/// Runs the gateway until SIGTERM, then drains within `--drain-timeout`.
pub(crate) async fn run(
    gateway: GatewayConfig,
    config: Config,
    metrics: PrometheusHandle,
) -> Result<(), Exit> {
    keep_metrics_bounded(metrics.clone());
    let mesh = MeshClient::new(&config, |restored| {
        let seed = restored.services_in_use().cloned().collect::<Vec<_>>();
        Subscriptions::new(BTreeSet::new(), true, config.service.clone(), seed)
            .with_gateway(&gateway.name)
    })?;
    let edge = match &gateway.tls {
        Some((cert, key)) => Some(edge_tls::EdgeTls::load(cert, key).map_err(Exit::Usage)?),
        None => None,
    };
    let listen = bind("--listen", gateway.listen).await?;
    let admin_listener = bind("--admin", config.admin).await?;
    let addresses = serde_json::json!({
        "listen": listen.local_addr().map_err(|e| Exit::Failure(e.to_string()))?.to_string(),
        "admin": admin_listener.local_addr().map_err(|e| Exit::Failure(e.to_string()))?.to_string(),
    });
    let drain = Drain::new();
    let admin = Arc::new(Admin {
        metrics,
        slot: mesh.slot.clone(),
        bundle: mesh.bundle.clone(),
        states: mesh.states.clone(),
        outbound: mesh.outbound.clone(),
        apps: Vec::new(),
        // Ready once the routes are known: a load balancer sends nothing
        // to a gateway that would answer 404 to everything.
        requires: Some(Resource::key_for(
            Kind::Gateway,
            &config.namespace,
            &gateway.name,
        )),
        drain: drain.clone(),
        limits: config.limits.clone(),
    });
    tokio::spawn(admin::serve(
        Listener::new("admin", admin_listener, config.limits.max_admin_connections),
        admin,
    ));

    let front = Arc::new(serve::Front {
        outbound: mesh.outbound.clone(),
        routes: ArcSwap::from_pointee(routes::RouteTable::default()),
        keys: jwks::KeyStore::default(),
        limits: config.limits.clone(),
        tls: edge.as_ref().map(edge_tls::EdgeTls::acceptor),
    });
    tokio::spawn(routes::follow(
        gateway.name.clone(),
        config.namespace.clone(),
        mesh.states.clone(),
        mesh.subscriptions.clone(),
        front.clone(),
    ));
    if let Some(edge) = edge {
        tokio::spawn(edge.reload_forever());
    }
    drain.spawn(serve::serve(
        Listener::new("gateway", listen, config.limits.max_connections),
        front,
        drain.clone(),
    ));
    if let Some(path) = &config.addresses_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{addresses:#}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Exit::Usage(format!("--addresses-file {}: {e}", path.display())))?;
    }
    let (identity, _control) = mesh.join(&config).await?;
    tracing::info!(%identity, gateway = %gateway.name, "gateway serving");
    bulkhead_process::shutdown_signal().await;
    tracing::info!(grace = ?config.drain_timeout, "SIGTERM: draining the gateway");
    if !drain.drain(config.drain_timeout).await {
        tracing::warn!("grace period over with client connections still open; closing them");
    }
    Ok(())
}
