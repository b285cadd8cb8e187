//! The fixture server's knobs and its request counters.

use super::faults::FaultRule;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Knobs of a fixture server.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    /// Added to every page search (not `_summary=count`, reads or metadata).
    pub latency: Duration,
    /// Most entries per page, whatever `_count` asks for.
    pub page_size_cap: Option<usize>,
    /// Most entries per page of a search by `_id` (servers cap some
    /// searches lower than others).
    pub id_search_page_cap: Option<usize>,
    /// `_count` when a search gives none.
    pub default_count: usize,
    /// Fault rules; the first that fires for a search applies.
    pub faults: Vec<FaultRule>,
    /// Seed of the generator behind `Trigger::Probability`.
    pub seed: u64,
    /// Search parameters silently ignored, as a lenient server ignores one
    /// it does not support (whatever `Prefer: handling=strict` asks).
    pub ignored_params: Vec<String>,
    /// Answers `_sort=_id`; when false, `_sort` is an unknown parameter (a
    /// 400, as from a server that cannot sort by id).
    pub sorts_by_id: bool,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            page_size_cap: None,
            id_search_page_cap: None,
            default_count: 100,
            faults: Vec::new(),
            seed: 1,
            ignored_params: Vec::new(),
            sorts_by_id: true,
        }
    }
}

/// Request counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FixtureStats {
    /// Every request except `/__stats`.
    pub requests: u64,
    /// Page searches per type (`_summary=count` not included).
    pub searches: BTreeMap<String, u64>,
    /// `_summary=count` searches per type.
    pub counts: BTreeMap<String, u64>,
    /// Reads (`GET /fhir/<Type>/<id>`).
    pub reads: u64,
    /// `metadata` requests.
    pub metadata: u64,
    /// Injected faults per kind.
    pub faults: BTreeMap<String, u64>,
    /// Entries served in search pages.
    pub resources_served: u64,
    /// Response body bytes of search pages.
    pub bytes_served: u64,
}
