//! Once a second: the harness process's resident memory and open file descriptors, and
//! the client runtime's live tasks (the mesh's, with the calls in flight counted apart).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use meshwork_benches::procfs;

use crate::load::Probe;

/// One sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) t: Duration,
    pub(crate) rss_mib: f64,
    pub(crate) fds: usize,
    pub(crate) tasks: usize,
    pub(crate) inflight: usize,
}

impl Sample {
    /// Tasks other than the calls in flight: the mesh's own (xDS client, balancers,
    /// connections, watchers) and the pacer.
    pub(crate) fn mesh_tasks(&self) -> usize {
        self.tasks.saturating_sub(self.inflight)
    }
}

/// Takes one sample now.
pub(crate) fn take(start: Instant, probe: &Probe) -> Sample {
    let (tasks, inflight) = probe.tasks();
    Sample {
        t: start.elapsed(),
        rss_mib: procfs::rss_mib("self").unwrap_or(f64::NAN),
        fds: procfs::open_fds("self").unwrap_or(0),
        tasks,
        inflight,
    }
}

/// Samples every second into the returned list until the task is aborted (one sample a
/// second: a ten-minute run keeps 600).
pub(crate) fn every_second(
    start: Instant,
    probe: Probe,
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let s = take(start, &probe);
            samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(s);
        }
    });
    (out, task)
}
