//! What a client asked to export: the level and the validated kick-off parameters.

use serde::{Deserialize, Serialize};

/// The level an export runs at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum ExportLevel {
    /// `[base]/$export`
    System,
    /// `[base]/Patient/$export`
    Patient,
    /// `[base]/Group/[id]/$export`
    Group(String),
}

/// One `_typeFilter` entry: a resource type and the search query applied to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeFilter {
    /// The resource type the query searches.
    pub resource_type: String,
    /// The query string (without the leading `?`), forwarded as is.
    pub query: String,
}

/// A validated kick-off request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Explicitly requested types (`_type`), in request order, deduplicated.
    pub types: Vec<String>,
    /// `_since` as given (validated instant).
    pub since: Option<String>,
    /// `_until` (or `_till`) as given (validated instant).
    pub until: Option<String>,
    /// `_typeFilter` queries.
    pub type_filters: Vec<TypeFilter>,
    /// `_container`, the output folder prefix.
    pub container: Option<String>,
    /// `patient` references (`Patient/<id>`).
    pub patients: Vec<String>,
    /// `allowPartialManifests` (accepted; we always return complete manifests).
    pub allow_partial_manifests: bool,
    /// Parameters ignored under `handling=lenient`, each with the reason.
    pub ignored: Vec<String>,
}
