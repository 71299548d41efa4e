//! TEMPORARY stand-in for meshwork-xds's server watch (branch serverwatch); removed at merge.
#![allow(dead_code, missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshwork_xds::bootstrap::BootstrapError;
use meshwork_xds::client::XdsClient;
use meshwork_xds::protocol::ResourceFailure;
use meshwork_xds::resource::{RouteConfiguration, ServerListener};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub enum ServerState {
    Pending,
    Ready(ServerConfig),
    Invalid {
        last_good: Option<ServerConfig>,
        error: ResourceFailure,
    },
    DoesNotExist,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listener: Arc<ServerListener>,
    pub routes: BTreeMap<String, Result<Arc<RouteConfiguration>, RouteUnavailable>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteUnavailable {
    #[error("route configuration {name:?} does not exist")]
    DoesNotExist { name: String },
    #[error("route configuration {name:?} was rejected")]
    Invalid {
        name: String,
        #[source]
        error: ResourceFailure,
    },
}

pub struct ServerWatch {
    name: String,
    rx: watch::Receiver<ServerState>,
}

impl ServerWatch {
    pub fn resource_name(&self) -> &str {
        &self.name
    }
    pub fn current(&self) -> ServerState {
        self.rx.borrow().clone()
    }
    pub async fn changed(&mut self) -> Option<ServerState> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }
}

pub fn watch_server(xds: &XdsClient, addr: SocketAddr) -> Result<ServerWatch, BootstrapError> {
    let name = xds.bootstrap().server_listener_resource_name(addr)?;
    let (_tx, rx) = watch::channel(ServerState::Pending);
    Ok(ServerWatch { name, rx })
}
