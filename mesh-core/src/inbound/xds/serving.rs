//! [`XdsServing`]: a server driven by its xDS Listener (gRFC A36), and its serving state.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use meshwork_xds::bootstrap::BootstrapError;
use meshwork_xds::client::XdsClient;
use meshwork_xds::protocol::ResourceFailure;

use meshwork_xds::client::{ServerConfig, ServerState, ServerWatch};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::slot::ChainTls;
use super::state::ListenerState;
use crate::identity::{CertificateProviders, IdentityError};
use crate::inbound::MeshAcceptor;

/// Whether an xDS-driven server serves (gRFC A36's serving modes).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServingState {
    /// It serves with the Listener from the control plane.
    Serving,
    /// It does not serve: new connections are closed at once, and the connections it had
    /// drain (GOAWAY, then close once their calls finish).
    NotServing(NotServing),
}

impl ServingState {
    /// Whether the server serves.
    pub fn is_serving(&self) -> bool {
        matches!(self, ServingState::Serving)
    }
}

impl fmt::Display for ServingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServingState::Serving => f.write_str("serving"),
            ServingState::NotServing(why) => write!(f, "not serving: {why}"),
        }
    }
}

/// Why an xDS-driven server does not serve.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NotServing {
    /// No usable Listener has come yet (or the RDS route configurations its chains name).
    #[error("waiting for Listener {name:?} from the control plane")]
    Waiting {
        /// The Listener's resource name.
        name: String,
    },
    /// The control plane says the Listener does not exist (never sent, or deleted).
    #[error("Listener {name:?} does not exist")]
    DoesNotExist {
        /// The Listener's resource name.
        name: String,
    },
    /// The Listener was rejected (NACKed) and there is no good one to keep serving.
    #[error("Listener {name:?} was rejected")]
    Invalid {
        /// The Listener's resource name.
        name: String,
        /// Why.
        #[source]
        error: ResourceFailure,
    },
    /// The Listener's address is not the one the server listens on (A36).
    #[error("Listener {name:?} is for {listener}, but the server listens on {server}")]
    AddressMismatch {
        /// The Listener's resource name.
        name: String,
        /// The address in the Listener.
        listener: SocketAddr,
        /// The server's listening address.
        server: SocketAddr,
    },
    /// A filter chain's TLS could not be built (an unknown or broken certificate provider
    /// instance) and there is no good Listener to keep serving.
    #[error("Listener {name:?}: a filter chain's TLS")]
    Tls {
        /// The Listener's resource name.
        name: String,
        /// Why.
        #[source]
        error: IdentityError,
    },
}

/// Called with each new [`ServingState`].
pub type ServingCallback = Arc<dyn Fn(&ServingState) + Send + Sync>;

/// A server's Listener from the control plane: watches it (gRFC A36) and keeps the
/// acceptor's filter chains, TLS, routes and RBAC in step with it.
///
/// The server subscribes to the Listener named by the bootstrap's
/// `server_listener_resource_name_template` with its listening address, and to the RDS route
/// configurations its chains name. It serves once the Listener and those have come; until
/// then, and whenever the Listener is deleted, rejected without a previous good one, or for
/// another address, it does not serve ([`NotServing`]). A rejected update, or one whose TLS
/// cannot be built, leaves the Listener being served in place. On an update, connections
/// of a chain whose match or TLS changed (or that is gone) drain, new connections take the
/// new chains at once, and connections of an unchanged chain see the new routes and RBAC
/// from their next request. Each change of state is logged (info when serving, warn when
/// not) and passed to the callback.
pub struct XdsServing {
    state: Arc<ListenerState>,
    status: watch::Receiver<ServingState>,
    resource_name: String,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for XdsServing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsServing")
            .field("resource_name", &self.resource_name)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for XdsServing {
    fn drop(&mut self) {
        self.task.abort();
        // An acceptor that outlives it must not keep serving a Listener nobody updates.
        self.state.stop();
    }
}

impl XdsServing {
    /// Starts watching the Listener for a server listening on `addr`, whose TLS chains offer
    /// `alpn` (`h2` for gRPC). Fails when the bootstrap has no
    /// `server_listener_resource_name_template` (or the name it gives is invalid). Must be
    /// called within a tokio runtime.
    pub fn start(
        xds: &XdsClient,
        addr: SocketAddr,
        alpn: Vec<Vec<u8>>,
        callback: Option<ServingCallback>,
    ) -> Result<Self, BootstrapError> {
        let watch = xds.watch_server(addr)?;
        let resource_name = watch.resource_name().to_owned();
        let state = Arc::new(ListenerState::default());
        let initial = ServingState::NotServing(NotServing::Waiting {
            name: resource_name.clone(),
        });
        let (tx, status) = watch::channel(initial);
        let driver = Driver {
            config_errors: std::sync::atomic::AtomicBool::new(false),
            state: state.clone(),
            providers: CertificateProviders::from_bootstrap(xds.bootstrap()),
            alpn,
            addr,
            name: resource_name.clone(),
            status: tx,
            callback,
        };
        tracing::info!(listener = %resource_name, %addr, "xDS server waiting for its Listener");
        let task = tokio::spawn(driver.run(watch));
        Ok(Self {
            state,
            status,
            resource_name,
            task,
        })
    }

    /// The Listener's resource name.
    pub fn resource_name(&self) -> &str {
        &self.resource_name
    }

    /// The current serving state, as a watch.
    pub fn status(&self) -> watch::Receiver<ServingState> {
        self.status.clone()
    }

    /// An acceptor for `listener` (bound to the address given to [`start`](Self::start))
    /// whose connections follow the Listener's filter chains.
    pub fn acceptor(&self, listener: TcpListener) -> MeshAcceptor {
        MeshAcceptor::xds(listener, self.state.clone())
    }

    /// [`start`](Self::start)s for `listener`'s address and gives its
    /// [`acceptor`](Self::acceptor): what an xDS-driven server runs.
    #[cfg(feature = "server")]
    pub fn bind(
        xds: &XdsClient,
        listener: TcpListener,
        alpn: Vec<Vec<u8>>,
        callback: Option<ServingCallback>,
    ) -> Result<(Self, MeshAcceptor), crate::inbound::ServeError> {
        let serving = Self::start(xds, listener.local_addr()?, alpn, callback)?;
        let acceptor = serving.acceptor(listener);
        Ok((serving, acceptor))
    }
}

struct Driver {
    /// Whether the served configuration was last found to fail some calls (A36's
    /// "configuration error logging").
    config_errors: std::sync::atomic::AtomicBool,
    state: Arc<ListenerState>,
    providers: CertificateProviders,
    alpn: Vec<Vec<u8>>,
    addr: SocketAddr,
    name: String,
    status: watch::Sender<ServingState>,
    callback: Option<ServingCallback>,
}

impl Driver {
    async fn run(self, mut watch: ServerWatch) {
        let mut next = Some(watch.current());
        while let Some(update) = next {
            self.apply(update);
            next = watch.changed().await;
        }
    }

    fn apply(&self, update: ServerState) {
        let name = self.name.clone();
        match update {
            ServerState::Ready(config) => self.serve(&config, None),
            ServerState::Invalid {
                last_good: Some(config),
                error,
            } => self.serve(&config, Some(error)),
            // A36: a rejected update is an ambient error while a Listener is served, even
            // one whose replacement is still waiting for its routes.
            ServerState::Invalid {
                last_good: None,
                error,
            } if self.state.is_serving() => {
                tracing::warn!(listener = %self.name, error = %meshwork_xds::ErrorChain(&error), "xDS Listener update rejected; keeping the Listener being served");
            }
            ServerState::Invalid {
                last_good: None,
                error,
            } => self.not_serving(NotServing::Invalid { name, error }),
            ServerState::DoesNotExist => self.not_serving(NotServing::DoesNotExist { name }),
            // Waiting for RDS after an update keeps the Listener being served (A36).
            _ => {}
        }
    }

    fn serve(&self, config: &ServerConfig, rejected: Option<ResourceFailure>) {
        if let Some(error) = &rejected {
            tracing::warn!(listener = %self.name, error = %meshwork_xds::ErrorChain(error), "xDS Listener update rejected; keeping the last good one");
        }
        let listener = config.listener.address;
        if listener != self.addr {
            return self.not_serving(NotServing::AddressMismatch {
                name: self.name.clone(),
                listener,
                server: self.addr,
            });
        }
        let tls = ChainTls {
            providers: &self.providers,
            alpn: &self.alpn,
        };
        match self.state.serve(config, &tls) {
            Ok(()) => {
                self.log_config_errors(config);
                self.report(ServingState::Serving);
            }
            Err(error) if self.state.is_serving() => {
                tracing::warn!(listener = %self.name, error = %meshwork_xds::ErrorChain(&error), "xDS Listener update not applied: a filter chain's TLS could not be built; keeping the Listener being served");
            }
            Err(error) => self.not_serving(NotServing::Tls {
                name: self.name.clone(),
                error,
            }),
        }
    }

    /// A36's configuration error logging: a warning on each update while the served
    /// configuration will fail calls (a chain's RDS unavailable, a route that is not
    /// non-forwarding), and one more when it no longer does.
    fn log_config_errors(&self, config: &ServerConfig) {
        use std::sync::atomic::Ordering;
        let listener = &config.listener;
        let chains = listener
            .filter_chains
            .iter()
            .chain(&listener.default_filter_chain);
        let (mut unavailable, mut forwarding) = (0usize, 0usize);
        let mut first = None;
        for chain in chains {
            match config.route_config(&chain.route) {
                Err(error) => {
                    unavailable += 1;
                    first.get_or_insert_with(|| {
                        format!(
                            "chain {:?}: {}",
                            chain.name,
                            meshwork_xds::ErrorChain(&error)
                        )
                    });
                }
                Ok(rc) => {
                    for vh in &rc.virtual_hosts {
                        for route in &vh.routes {
                            if !matches!(
                                route.action,
                                meshwork_xds::resource::RouteAction::NonForwarding
                            ) {
                                forwarding += 1;
                                first.get_or_insert_with(|| format!("chain {:?}: route {:?} of virtual host {:?} is not non-forwarding", chain.name, route.name, vh.name));
                            }
                        }
                    }
                }
            }
        }
        if let Some(first) = first {
            self.config_errors.store(true, Ordering::Relaxed);
            tracing::warn!(listener = %self.name, unavailable_route_configurations = unavailable, non_forwarding_routes_missing = forwarding, first = %first, "the served xDS configuration fails some calls with UNAVAILABLE");
        } else if self.config_errors.swap(false, Ordering::Relaxed) {
            tracing::warn!(listener = %self.name, "the served xDS configuration no longer fails calls");
        }
    }

    fn not_serving(&self, why: NotServing) {
        self.state.stop();
        self.report(ServingState::NotServing(why));
    }

    fn report(&self, new: ServingState) {
        let changed = self.status.send_if_modified(|current| {
            let same = match (&*current, &new) {
                (ServingState::Serving, ServingState::Serving) => true,
                (ServingState::NotServing(a), ServingState::NotServing(b)) => {
                    a.to_string() == b.to_string()
                }
                _ => false,
            };
            if !same {
                *current = new.clone();
            }
            !same
        });
        if !changed {
            return;
        }
        match &new {
            ServingState::Serving => {
                tracing::info!(listener = %self.name, addr = %self.addr, "xDS server serving");
            }
            ServingState::NotServing(why) => {
                tracing::warn!(listener = %self.name, addr = %self.addr, reason = %meshwork_xds::ErrorChain(why), "xDS server not serving");
            }
        }
        if let Some(callback) = &self.callback {
            callback(&new);
        }
    }
}
