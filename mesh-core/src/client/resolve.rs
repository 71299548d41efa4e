//! An `xds:` target resolved into a [`ConfigReceiver`] that follows the control plane.

use std::sync::Arc;
use std::time::Duration;

use meshwork_xds::bootstrap::{BootstrapError, TargetParseError, XdsTarget};
use meshwork_xds::client::{ReadyError, TargetWatch, XdsClient};
use meshwork_xds::watch::TargetState;

use crate::config::{self, ConfigReceiver, ConfigSender, TargetConfig};

/// Why an `xds:` target could not be resolved into a config.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The target is not a valid `xds:` target.
    #[error("target {target:?}: {source}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// Why.
        #[source]
        source: TargetParseError,
    },
    /// The bootstrap's listener name template could not be applied to the target, or its
    /// authority (`xds://authority/name`, gRFC A47) is not in the bootstrap's
    /// `authorities`.
    #[error("target {target:?}: {source}")]
    ListenerName {
        /// The target as given.
        target: String,
        /// Why.
        #[source]
        source: Arc<BootstrapError>,
    },
    /// The client was made without an xDS client, so it cannot resolve `xds:` targets.
    #[error("target {target:?}: no xDS client to resolve it with")]
    NoXdsClient {
        /// The target as given.
        target: String,
    },
    /// No usable config for the target: its listener does not exist, is invalid, or did
    /// not arrive in time; for the last, [`ReadyError::Timeout`] says why (the xDS servers
    /// that cannot be reached and their errors, or the resources still missing and their
    /// states).
    #[error("target {target:?}: {source}")]
    Xds {
        /// The target as given.
        target: String,
        /// Why.
        #[source]
        source: ReadyError,
    },
}

impl ResolveError {
    /// The target that could not be resolved, as given.
    pub fn target(&self) -> &str {
        match self {
            ResolveError::InvalidTarget { target, .. }
            | ResolveError::NoXdsClient { target }
            | ResolveError::ListenerName { target, .. }
            | ResolveError::Xds { target, .. } => target,
        }
    }
}

/// Resolves the xDS target `target` (`xds:///name[:port]`) through `client`: the listener
/// named by the bootstrap's client listener template (`%s` unless it says otherwise), the
/// virtual host chosen by the target's own name (gRFC A27).
///
/// Waits, at most `ready_timeout`, for the first complete config (gRFC A74); a target the
/// control plane says does not exist fails at once. The receiver then follows the target:
/// each new complete config is published on it, and if the target later turns into an
/// error the last good config stays (logged at warn level), as gRPC keeps using its last
/// good config. The task that follows it ends when every clone of the receiver is gone or
/// the xDS client stops. Must be called within a tokio runtime.
pub async fn resolve_xds(
    client: &XdsClient,
    target: &str,
    ready_timeout: Duration,
) -> Result<ConfigReceiver, ResolveError> {
    let resolved = resolve_first(client, target, ready_timeout).await?;
    let (tx, rx) = config::channel(resolved.first);
    tokio::spawn(follow(resolved.watch, tx, resolved.target, || {}));
    Ok(rx)
}

/// A target's first complete config, and the watch that follows it.
pub(crate) struct Resolved {
    pub(crate) first: TargetConfig,
    pub(crate) watch: TargetWatch,
    pub(crate) target: String,
}

/// The first half of [`resolve_xds`]: the target's watch and its first complete config.
pub(crate) async fn resolve_first(
    client: &XdsClient,
    target: &str,
    ready_timeout: Duration,
) -> Result<Resolved, ResolveError> {
    let parsed = XdsTarget::parse(target).map_err(|source| ResolveError::InvalidTarget {
        target: target.to_owned(),
        source,
    })?;
    let listener = client
        .bootstrap()
        .listener_resource_name_for(&parsed)
        .map_err(|source| ResolveError::ListenerName {
            target: target.to_owned(),
            source: Arc::new(source),
        })?;
    let mut watch = client
        .watch_target(&listener, parsed.data_plane_authority())
        .await;
    let first = watch
        .ready(ready_timeout)
        .await
        .map_err(|source| ResolveError::Xds {
            target: target.to_owned(),
            source,
        })?;
    Ok(Resolved {
        first: TargetConfig::from_xds(&first),
        watch,
        target: target.to_owned(),
    })
}

/// The second half of [`resolve_xds`], run as a task: publishes each new complete config of
/// `watch` on `tx` and then calls `published` (so that a consumer can apply it in this
/// task, without waking one of its own); keeps the last good config when the target turns
/// into an error. Ends when every receiver of `tx` is gone (releasing the subscriptions) or
/// the xDS client stops.
pub(crate) async fn follow(
    mut watch: TargetWatch,
    tx: ConfigSender,
    target: String,
    published: impl Fn(),
) {
    loop {
        let state = tokio::select! {
            s = watch.changed() => s,
            // Every receiver is gone: stop watching (and release the subscriptions).
            () = tx.closed() => return,
        };
        match state {
            Some(TargetState::Ready(cfg)) => {
                if tx.send(Arc::new(TargetConfig::from_xds(&cfg))).is_err() {
                    return;
                }
                published();
            }
            Some(TargetState::Error(e)) => {
                tracing::warn!(%target, error = %e, "xDS target in error; keeping the last config");
            }
            Some(_) => {}
            None => return,
        }
    }
}
