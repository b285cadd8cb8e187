//! Which patients' compartments an export covers.

use serde::{Deserialize, Serialize};

/// Which patients' compartments an export covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "ids", rename_all = "lowercase")]
pub enum PatientScope {
    /// System level: no compartment restriction.
    #[default]
    None,
    /// Every patient's compartment.
    All,
    /// The compartments of these patients (sorted, deduplicated ids).
    Members(Vec<String>),
}

impl PatientScope {
    /// True if `id` is one of the covered patients.
    pub fn contains(&self, id: &str) -> bool {
        match self {
            PatientScope::None | PatientScope::All => true,
            PatientScope::Members(ids) => ids.binary_search_by(|m| m.as_str().cmp(id)).is_ok(),
        }
    }

    /// True for a compartment-restricted export.
    pub fn is_compartment(&self) -> bool {
        !matches!(self, PatientScope::None)
    }
}

/// Whether a resource belongs to the covered compartments, and if so the
/// smallest covered patient it links to, with the first parameter linking it.
pub fn compartment_owner(
    resource: &serde_json::Value,
    scope: &PatientScope,
) -> Option<(String, usize)> {
    crate::fhir::compartment::patient_links(resource)
        .into_iter()
        .filter(|(_, id)| scope.contains(id))
        .min_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)))
        .map(|(param, id)| (id, param))
}
