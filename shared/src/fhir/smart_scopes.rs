//! SMART scopes: which resource types a caller may export. Accepts v1
//! (`system/Observation.read`, `system/*.read`) and v2 (`system/Observation.rs`,
//! `system/*.cruds`) forms; only `system/` scopes grant bulk export.

/// What a caller's scopes allow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadableTypes {
    /// `system/*.read` (or v2 equivalent).
    pub all: bool,
    /// Individually granted types.
    pub types: Vec<String>,
}

impl ReadableTypes {
    /// True if the caller may export `resource_type`.
    pub fn allows(&self, resource_type: &str) -> bool {
        self.all || self.types.iter().any(|t| t == resource_type)
    }

    /// True if no type at all is readable.
    pub fn is_empty(&self) -> bool {
        !self.all && self.types.is_empty()
    }
}

/// True if a v2 permission string (`c`,`r`,`u`,`d`,`s` in order, each at most
/// once) grants both read and search.
fn v2_grants_read_search(perms: &str) -> bool {
    let order = "cruds";
    let mut last = None;
    for c in perms.chars() {
        let Some(pos) = order.find(c) else {
            return false;
        };
        if last.is_some_and(|l| pos <= l) {
            return false;
        }
        last = Some(pos);
    }
    !perms.is_empty() && perms.contains('r') && perms.contains('s')
}

/// Parses the scopes of a token into the types it may export.
pub fn readable_types(scopes: &[String]) -> ReadableTypes {
    let mut out = ReadableTypes::default();
    for scope in scopes {
        // v2 scopes may carry a query (`?category=...`); a restricted scope does
        // not grant the whole type, so it is ignored here rather than widened.
        if scope.contains('?') {
            continue;
        }
        let Some(rest) = scope.strip_prefix("system/") else {
            continue;
        };
        let Some((ty, perms)) = rest.rsplit_once('.') else {
            continue;
        };
        let grants = matches!(perms, "read" | "*") || v2_grants_read_search(perms);
        if !grants {
            continue;
        }
        if ty == "*" {
            out.all = true;
        } else if crate::fhir::resource_types::is_resource_type(ty)
            && !out.types.iter().any(|t| t == ty)
        {
            out.types.push(ty.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &[&str]) -> ReadableTypes {
        readable_types(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn v1_and_v2_forms() {
        assert!(r(&["system/*.read"]).all);
        assert!(r(&["system/*.rs"]).all);
        assert!(r(&["system/*.cruds"]).all);
        assert!(r(&["system/Observation.read"]).allows("Observation"));
        assert!(!r(&["system/Observation.read"]).allows("Patient"));
        assert!(r(&["system/Observation.rs"]).allows("Observation"));
        assert!(
            !r(&["system/Observation.r"]).allows("Observation"),
            "read without search cannot export"
        );
        assert!(
            !r(&["system/Observation.sr"]).allows("Observation"),
            "out of order"
        );
        assert!(r(&["patient/*.read", "user/*.rs", "launch", "openid"]).is_empty());
        assert!(r(&["system/Observation.rs?category=laboratory"]).is_empty());
        assert!(!r(&["system/Foo.read"]).allows("Foo"));
    }
}
