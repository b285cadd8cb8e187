//! Who is calling: the authenticated client and its SMART scopes.

/// An authenticated (or, without auth configured, anonymous local) caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `client_id` claim, else `sub`.
    pub client_id: String,
    /// Space-separated `scope` claim, split.
    pub scopes: Vec<String>,
}

impl Caller {
    /// The caller used when authentication is not configured (loopback only).
    pub fn anonymous() -> Self {
        Self {
            client_id: "anonymous".into(),
            scopes: vec!["system/*.read".into()],
        }
    }
}
