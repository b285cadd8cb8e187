//! What every connection of one fixture server shares: the dataset, the
//! options, the counters and the fault rules' numbering.

use super::dataset::Dataset;
use super::faults::{Fault, Trigger};
use super::options::{FixtureOptions, FixtureStats};
use crate::generate::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct State {
    pub(crate) data: Dataset,
    pub(crate) opts: FixtureOptions,
    /// `http://127.0.0.1:<port>`.
    origin: String,
    stats: Mutex<FixtureStats>,
    rule_hits: Vec<AtomicU64>,
    rng: Mutex<Rng>,
    nonce: AtomicU64,
    /// Ids deleted per type since the server started.
    deleted: Mutex<HashMap<String, HashSet<String>>>,
}

impl State {
    pub(crate) fn new(data: Dataset, opts: FixtureOptions, origin: String) -> Self {
        Self {
            data,
            rule_hits: opts.faults.iter().map(|_| AtomicU64::new(0)).collect(),
            rng: Mutex::new(Rng::new(opts.seed)),
            opts,
            origin,
            stats: Mutex::new(FixtureStats::default()),
            nonce: AtomicU64::new(0),
            deleted: Mutex::default(),
        }
    }

    /// The FHIR base URL.
    pub(crate) fn base(&self) -> String {
        format!("{}/fhir", self.origin)
    }

    pub(crate) fn stats(&self) -> FixtureStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn bump(&self, f: impl FnOnce(&mut FixtureStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Deletes a loaded resource: searches and reads no longer find it.
    /// False if it was not loaded or is deleted already.
    pub(crate) fn delete(&self, ty: &str, id: &str) -> bool {
        if self.data.types.get(ty).and_then(|d| d.read(id)).is_none() {
            return false;
        }
        self.deleted
            .lock()
            .map(|mut d| d.entry(ty.to_string()).or_default().insert(id.to_string()))
            .unwrap_or(false)
    }

    /// The ids of `ty` deleted so far.
    pub(crate) fn deleted(&self, ty: &str) -> HashSet<String> {
        self.deleted
            .lock()
            .ok()
            .and_then(|d| d.get(ty).cloned())
            .unwrap_or_default()
    }

    /// A fresh number, so that links that would otherwise repeat differ.
    pub(crate) fn next_nonce(&self) -> u64 {
        self.nonce.fetch_add(1, Ordering::SeqCst)
    }

    /// The first rule that fires for a page search of `ty`, counting it.
    pub(crate) fn pick_fault(&self, ty: &str) -> Option<Fault> {
        let mut chosen = None;
        for (rule, hits) in self.opts.faults.iter().zip(&self.rule_hits) {
            if rule.resource_type.as_deref().is_some_and(|t| t != ty) {
                continue;
            }
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            let fires = match rule.trigger {
                Trigger::Nth(k) => n == k,
                Trigger::From(k) => n >= k,
                Trigger::Probability(p) => {
                    let draw = self.rng.lock().map(|mut r| r.next_u64()).unwrap_or(0);
                    (draw >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
                }
            };
            if fires && chosen.is_none() {
                chosen = Some(rule.fault.clone());
            }
        }
        if let Some(f) = &chosen {
            let kind = f.kind();
            self.bump(|s| *s.faults.entry(kind).or_default() += 1);
        }
        chosen
    }
}
