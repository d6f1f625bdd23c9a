//! Worker threads for the requests that may take long (copy-ups of whole files, fsync, large
//! copies): the request thread hands them over and goes on serving lookups, creates and the
//! like, so that one big copy-up does not stall the whole mount. The replies are sent from
//! the worker when the work is done.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads fed through one queue.
pub struct Pool {
    /// `None` when no worker could be started: jobs then run on the caller's thread.
    tx: Option<Sender<Job>>,
}

impl Pool {
    /// Starts `n` workers (they end when the pool is dropped and the queue drains).
    pub fn new(n: usize) -> Pool {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..n {
            let rx = rx.clone();
            match std::thread::Builder::new()
                .name(format!("strata-work-{i}"))
                .spawn(move || work(&rx))
            {
                Ok(_) => started += 1,
                Err(e) => log::warn!("cannot start a worker thread: {e}"),
            }
        }
        Pool {
            tx: (started > 0).then_some(tx),
        }
    }

    /// Runs `job` on a worker (or here, when there is none).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(job);
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    (e.0)();
                }
            }
            None => job(),
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let r = rx.lock().unwrap_or_else(|p| p.into_inner());
            r.recv()
        };
        match job {
            Ok(job) => job(),
            Err(_) => return, // the pool is gone
        }
    }
}
