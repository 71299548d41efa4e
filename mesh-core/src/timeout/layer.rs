use std::time::Duration;

use tower::Layer;

use super::Timeout;

/// Applies [`Timeout`] to a service.
#[derive(Debug, Clone, Default)]
pub struct TimeoutLayer {
    default: Option<Duration>,
}

impl TimeoutLayer {
    /// Route deadlines only (and `grpc-timeout`); no default.
    pub fn new() -> Self {
        Self::default()
    }

    /// With a default timeout for requests that carry no route policy.
    pub fn with_default(default: Duration) -> Self {
        Self {
            default: Some(default),
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            default: self.default,
        }
    }
}
