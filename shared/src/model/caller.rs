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
    /// The caller named by token claims: `client_id`, else `sub` (empty
    /// values count as absent); `scope` split on any whitespace, as RFC 6749
    /// section 3.3 allows. `None` when the token names no client.
    pub fn from_claims(
        client_id: Option<&str>,
        sub: Option<&str>,
        scope: Option<&str>,
    ) -> Option<Self> {
        let client_id = client_id
            .filter(|v| !v.is_empty())
            .or(sub.filter(|v| !v.is_empty()))?;
        let scopes = scope
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Some(Self {
            client_id: client_id.to_owned(),
            scopes,
        })
    }

    /// The caller used when authentication is not configured (loopback only).
    pub fn anonymous() -> Self {
        Self {
            client_id: "anonymous".into(),
            scopes: vec!["system/*.read".into()],
        }
    }
}
