//! The example `helloworld.Greeter`: replies `"<ID>: hello <name>"`, and can be made flaky
//! or failing while it runs (the demo does, to show retries and outlier detection).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meshwork_grpc::core::identity::PeerIdentity;
use tonic::{Request, Response, Status};

use crate::helloworld::greeter_server::{Greeter as GreeterApi, GreeterServer};
use crate::helloworld::{HelloReply, HelloRequest};

/// How a [`Greeter`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Every call succeeds.
    Healthy,
    /// One call in three fails with UNAVAILABLE.
    Flaky,
    /// Every call fails with UNAVAILABLE.
    Failing,
}

/// A greeter backend named `id`. Clones share their state.
#[derive(Debug, Clone)]
pub struct Greeter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    behaviour: AtomicU8,
    calls: AtomicU64,
    failed: AtomicU64,
    callers: Mutex<BTreeSet<String>>,
}

impl Greeter {
    /// A healthy greeter named `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: id.into(),
                behaviour: AtomicU8::new(Behaviour::Healthy as u8),
                calls: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                callers: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// The tonic service to add to a server.
    pub fn service(&self) -> GreeterServer<Self> {
        GreeterServer::new(self.clone())
    }

    /// The backend's ID.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Changes how it answers from the next call on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.inner
            .behaviour
            .store(behaviour as u8, Ordering::Relaxed);
    }

    /// Calls received, and how many of them it failed on purpose.
    pub fn calls(&self) -> (u64, u64) {
        (
            self.inner.calls.load(Ordering::Relaxed),
            self.inner.failed.load(Ordering::Relaxed),
        )
    }

    /// The SPIFFE IDs of the callers seen so far.
    pub fn callers(&self) -> Vec<String> {
        self.inner
            .callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[tonic::async_trait]
impl GreeterApi for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let n = self.inner.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(peer) = request.extensions().get::<PeerIdentity>() {
            let id = peer.spiffe_id().to_string();
            let mut callers = self.inner.callers.lock().unwrap_or_else(|e| e.into_inner());
            callers.insert(id);
        }
        let fail = match self.inner.behaviour.load(Ordering::Relaxed) {
            b if b == Behaviour::Failing as u8 => true,
            b if b == Behaviour::Flaky as u8 => n % 3 == 2,
            _ => false,
        };
        if fail {
            self.inner.failed.fetch_add(1, Ordering::Relaxed);
            return Err(Status::unavailable(format!(
                "{} is failing on purpose",
                self.inner.id
            )));
        }
        Ok(Response::new(HelloReply {
            message: format!("{}: hello {}", self.inner.id, request.into_inner().name),
        }))
    }
}
