//! The watch an xDS-enabled server keeps on its own configuration (gRFC A36): the server
//! Listener named after its listening address, and the RouteConfigurations its filter
//! chains take from RDS.
//!
//! It is built from [`ResourceWatch`]es, composed in a task of its own rather than inside
//! the client's worker: the worker stays the one place that speaks ADS, and this task only
//! reads the cache through the same watches a user could hold. The task subscribes to
//! every RDS name the current Listener's chains use (the default chain included) and
//! drops a subscription once no chain names it, so it holds at most one RDS subscription
//! per chain. It ends when the [`ServerWatch`] is dropped (taking every subscription with
//! it) or when the client stops.
//!
//! Like grpc-go's listener wrapper (`xds/internal/server/listener_wrapper.go`,
//! `rds_handler.go`), a Listener counts only once each of its RDS names has settled: until
//! then the state is [`ServerState::Pending`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;

use super::{ResourceWatch, WatchState, XdsClient};
use crate::bootstrap::BootstrapError;
use crate::protocol::ResourceFailure;
use crate::resource::{
    Resource, ResourceError, ResourceErrorKind, ResourceType, RouteConfiguration, RouteSource,
    ServerListener,
};

/// What an xDS-enabled server knows of its configuration (gRFC A36).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerState {
    /// No Listener yet, or one of its RDS names has not settled yet. A server that already
    /// serves keeps its previous configuration meanwhile (A36: a Listener update takes
    /// effect once its routes are complete); one that does not yet serve waits.
    Pending,
    /// The configuration to serve.
    Ready(ServerConfig),
    /// The latest Listener was rejected, or is a client-side one (with an `api_listener`);
    /// keep serving `last_good`.
    Invalid {
        /// The last good Listener with its current routes (RDS updates still apply to it);
        /// `None` when there was none, or its routes have not all settled.
        last_good: Option<ServerConfig>,
        /// Why the latest Listener is not usable.
        error: ResourceFailure,
    },
    /// The Listener does not exist (deleted, reported missing, or timed out): stop serving.
    DoesNotExist,
}

impl ServerState {
    /// The configuration to serve now, if any: the current one, or the last good one after
    /// a rejected Listener.
    pub fn config(&self) -> Option<&ServerConfig> {
        match self {
            Self::Ready(config) => Some(config),
            Self::Invalid { last_good, .. } => last_good.as_ref(),
            Self::Pending | Self::DoesNotExist => None,
        }
    }
}

/// A server Listener with the route configurations its chains use.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The Listener.
    pub listener: Arc<ServerListener>,
    /// Every RDS name the chains use, to its current configuration (the last good one after
    /// a rejected update) or why there is none. Inline route configurations are in the
    /// chains themselves.
    pub routes: BTreeMap<String, Result<Arc<RouteConfiguration>, RouteUnavailable>>,
}

impl ServerConfig {
    /// The route configuration of `route`: the inline one, or the RDS one from
    /// [`routes`](Self::routes).
    pub fn route_config(
        &self,
        route: &RouteSource,
    ) -> Result<Arc<RouteConfiguration>, RouteUnavailable> {
        match route {
            RouteSource::Inline(rc) => Ok(rc.clone()),
            RouteSource::Rds { route_config_name } => match self.routes.get(route_config_name) {
                Some(result) => result.clone(),
                // A ServerConfig holds every name its chains use; a hand-built one may not.
                None => Err(RouteUnavailable::DoesNotExist {
                    name: route_config_name.clone(),
                }),
            },
        }
    }
}

/// Why a chain's RDS route configuration is not available. A36: the chain's requests fail
/// (UNAVAILABLE) while the other chains serve.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RouteUnavailable {
    /// The route configuration does not exist.
    #[error("route configuration {name} does not exist")]
    DoesNotExist {
        /// Its name.
        name: String,
    },
    /// The route configuration was rejected and there is no last good value.
    #[error("route configuration {name} is invalid: {error}")]
    Invalid {
        /// Its name.
        name: String,
        /// Why it was rejected.
        #[source]
        error: ResourceFailure,
    },
}

/// A live watch of an xDS-enabled server's configuration ([`XdsClient::watch_server`]).
/// Dropping it releases every subscription it holds.
#[derive(Debug)]
pub struct ServerWatch {
    name: String,
    rx: watch::Receiver<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerWatch {
    /// The Listener's resource name.
    pub fn resource_name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn current(&self) -> ServerState {
        self.rx.borrow().clone()
    }

    /// Wait for the next change, then return the new state. `None` once the client stopped.
    pub async fn changed(&mut self) -> Option<ServerState> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }
}

impl Drop for ServerWatch {
    fn drop(&mut self) {
        // The task's ResourceWatches unsubscribe as they drop with it.
        self.task.abort();
    }
}

impl XdsClient {
    /// Watch the configuration of an xDS-enabled server listening on `addr` (gRFC A36):
    /// the Listener named by the bootstrap's `server_listener_resource_name_template`
    /// ([`Bootstrap::server_listener_resource_name`](crate::bootstrap::Bootstrap::server_listener_resource_name))
    /// and the route configurations its filter chains take from RDS. Fails when the
    /// bootstrap has no template, or the name it gives is not usable.
    pub fn watch_server(&self, addr: SocketAddr) -> Result<ServerWatch, BootstrapError> {
        let name = self.bootstrap.server_listener_resource_name(addr)?;
        let (tx, rx) = watch::channel(ServerState::Pending);
        let task = self.runtime.spawn(run(self.clone(), name.clone(), tx));
        Ok(ServerWatch { name, rx, task })
    }
}

/// The task behind a [`ServerWatch`]: follows the Listener and the RDS names it uses, and
/// publishes each change. Ends when the watch is dropped or the client stops.
async fn run(client: XdsClient, name: String, tx: watch::Sender<ServerState>) {
    let mut lds = client.watch(ResourceType::Listener, &name).await;
    let mut rds: HashMap<String, ResourceWatch> = HashMap::new();
    let mut follow = Follow::default();
    loop {
        let listener = lds.rx.borrow_and_update().clone();
        let names = follow.listener(&name, listener);
        rds.retain(|n, _| names.contains(n));
        for n in &names {
            if !rds.contains_key(n) {
                let w = client.watch(ResourceType::RouteConfiguration, n).await;
                rds.insert(n.clone(), w);
            }
        }
        let routes: BTreeMap<&str, WatchState> = rds
            .iter_mut()
            .map(|(n, w)| (n.as_str(), w.rx.borrow_and_update().clone()))
            .collect();
        let state = follow.state(&routes);
        tx.send_replace(state);

        // Wakes on any change; the states are all read again above.
        let mut route_changes: FuturesUnordered<_> = rds
            .values()
            .map(|w| {
                let mut rx = w.rx.clone();
                async move { rx.changed().await }
            })
            .collect();
        let changed = tokio::select! {
            r = lds.rx.changed() => r,
            Some(r) = route_changes.next() => r,
            () = tx.closed() => return,
        };
        if changed.is_err() {
            // The client stopped: dropping `tx` ends the ServerWatch's `changed`.
            return;
        }
    }
}

/// What the task knows of the Listener, kept across updates.
#[derive(Default)]
struct Follow {
    /// The current Listener's state.
    current: Current,
    /// The latest server Listener that was good, for [`ServerState::Invalid`].
    last_good: Option<Arc<ServerListener>>,
}

#[derive(Default)]
enum Current {
    #[default]
    Pending,
    Ready(Arc<ServerListener>),
    Invalid(ResourceFailure),
    DoesNotExist,
}

impl Follow {
    /// Takes the Listener watch's latest state; returns the RDS names to subscribe to.
    fn listener(&mut self, name: &str, state: WatchState) -> BTreeSet<String> {
        self.current = match state {
            WatchState::Pending => Current::Pending,
            WatchState::DoesNotExist => {
                self.last_good = None;
                Current::DoesNotExist
            }
            WatchState::Ready(Resource::ServerListener(l)) => {
                self.last_good = Some(l.clone());
                Current::Ready(l)
            }
            WatchState::Ready(_) => Current::Invalid(not_a_server_listener(name)),
            WatchState::Invalid { last_good, error } => {
                match last_good {
                    Some(Resource::ServerListener(l)) => self.last_good = Some(l),
                    // The cache dropped it (the server's `fail_on_data_errors`).
                    None => self.last_good = None,
                    // A client listener was the last good one: ours is older still.
                    Some(_) => {}
                }
                Current::Invalid(error)
            }
        };
        let listener = match &self.current {
            Current::Ready(l) => Some(l),
            Current::Invalid(_) => self.last_good.as_ref(),
            Current::Pending | Current::DoesNotExist => None,
        };
        listener.map(|l| rds_names(l)).unwrap_or_default()
    }

    /// The state to publish, given the route watches' states by name.
    fn state(&self, routes: &BTreeMap<&str, WatchState>) -> ServerState {
        match &self.current {
            Current::Pending => ServerState::Pending,
            Current::DoesNotExist => ServerState::DoesNotExist,
            Current::Ready(l) => match config(l, routes) {
                Some(config) => ServerState::Ready(config),
                None => ServerState::Pending,
            },
            Current::Invalid(error) => ServerState::Invalid {
                last_good: self.last_good.as_ref().and_then(|l| config(l, routes)),
                error: error.clone(),
            },
        }
    }
}

/// `listener` with its RDS routes, or `None` while one of them has not settled.
fn config(
    listener: &Arc<ServerListener>,
    routes: &BTreeMap<&str, WatchState>,
) -> Option<ServerConfig> {
    let mut out = BTreeMap::new();
    for name in rds_names(listener) {
        let route = match routes.get(name.as_str())? {
            WatchState::Pending => return None,
            WatchState::Ready(Resource::RouteConfiguration(rc))
            | WatchState::Invalid {
                last_good: Some(Resource::RouteConfiguration(rc)),
                ..
            } => Ok(rc.clone()),
            WatchState::Invalid { error, .. } => Err(RouteUnavailable::Invalid {
                name: name.clone(),
                error: error.clone(),
            }),
            // An RDS watch holds nothing else; read anything else as missing.
            WatchState::DoesNotExist | WatchState::Ready(_) => {
                Err(RouteUnavailable::DoesNotExist { name: name.clone() })
            }
        };
        out.insert(name, route);
    }
    Some(ServerConfig {
        listener: listener.clone(),
        routes: out,
    })
}

/// The RDS names of every chain, the default one included.
fn rds_names(listener: &ServerListener) -> BTreeSet<String> {
    listener
        .filter_chains
        .iter()
        .chain(&listener.default_filter_chain)
        .filter_map(|chain| match &chain.route {
            RouteSource::Rds { route_config_name } => Some(route_config_name.clone()),
            RouteSource::Inline(_) => None,
        })
        .collect()
}

/// The failure a server reports for a client-side Listener under its name: the same words
/// as decoding it as a server Listener.
fn not_a_server_listener(name: &str) -> ResourceFailure {
    ResourceFailure::Validation(ResourceError::new(
        Some(name.to_owned()),
        ResourceErrorKind::invalid(
            "api_listener",
            "a server Listener has no api_listener (this is a client-side listener)",
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{FilterChain, FilterChainMatch};

    fn listener(rds: &[&str]) -> Arc<ServerListener> {
        let chain = |name: &str| FilterChain {
            name: String::new(),
            filter_match: FilterChainMatch::default(),
            tls: None,
            route: RouteSource::Rds {
                route_config_name: name.to_owned(),
            },
            http_filters: Vec::new(),
            max_stream_duration: None,
        };
        Arc::new(ServerListener {
            name: "l".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            filter_chains: rds.iter().map(|n| chain(n)).collect(),
            default_filter_chain: None,
            unsupported_fields: Vec::new(),
        })
    }

    fn routes(name: &str) -> WatchState {
        WatchState::Ready(Resource::RouteConfiguration(Arc::new(RouteConfiguration {
            name: name.into(),
            virtual_hosts: Vec::new(),
            unsupported_fields: Vec::new(),
        })))
    }

    fn failure() -> ResourceFailure {
        ResourceFailure::Duplicate { name: "l".into() }
    }

    #[test]
    fn a_client_listener_after_a_server_one_keeps_the_server_one() {
        let mut follow = Follow::default();
        let good = listener(&["r"]);
        let names = follow.listener(
            "l",
            WatchState::Ready(Resource::ServerListener(good.clone())),
        );
        assert_eq!(names, BTreeSet::from(["r".to_owned()]));
        let client = Arc::new(crate::resource::Listener {
            name: "l".into(),
            route: RouteSource::Rds {
                route_config_name: "other".into(),
            },
            http_filters: Vec::new(),
            max_stream_duration: None,
            unsupported_fields: Vec::new(),
        });
        let names = follow.listener("l", WatchState::Ready(Resource::Listener(client)));
        assert_eq!(
            names,
            BTreeSet::from(["r".to_owned()]),
            "the last good's names"
        );
        match follow.state(&BTreeMap::from([("r", routes("r"))])) {
            ServerState::Invalid { last_good, error } => {
                assert!(Arc::ptr_eq(&last_good.unwrap().listener, &good));
                assert!(error.to_string().contains("api_listener"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn last_good_waits_for_its_routes_and_a_dropped_one_is_gone() {
        let mut follow = Follow::default();
        let good = listener(&["a", "b"]);
        follow.listener(
            "l",
            WatchState::Invalid {
                last_good: Some(Resource::ServerListener(good)),
                error: failure(),
            },
        );
        let pending = BTreeMap::from([("a", routes("a")), ("b", WatchState::Pending)]);
        assert!(matches!(
            follow.state(&pending),
            ServerState::Invalid {
                last_good: None,
                ..
            }
        ));
        let settled = BTreeMap::from([("a", routes("a")), ("b", WatchState::DoesNotExist)]);
        match follow.state(&settled) {
            ServerState::Invalid {
                last_good: Some(config),
                ..
            } => {
                assert!(config.routes["a"].is_ok());
                assert!(matches!(
                    &config.routes["b"],
                    Err(RouteUnavailable::DoesNotExist { name }) if name == "b"
                ));
            }
            other => panic!("{other:?}"),
        }

        // `fail_on_data_errors`: the cache dropped the last good value, so do we.
        let names = follow.listener(
            "l",
            WatchState::Invalid {
                last_good: None,
                error: failure(),
            },
        );
        assert!(names.is_empty());
        assert!(matches!(
            follow.state(&BTreeMap::new()),
            ServerState::Invalid {
                last_good: None,
                ..
            }
        ));
    }
}
