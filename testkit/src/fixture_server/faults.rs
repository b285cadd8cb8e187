//! What the fixture server can break in a search response, and when.

use std::time::Duration;

/// A fault the server can inject into a search response.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// An error status (429/500/502/503/504) with an optional `Retry-After` in seconds.
    Status(u16, Option<u64>),
    /// `200 OK` with an HTML body, like a misconfigured proxy's error page.
    HtmlErrorPage,
    /// `200 OK` with the JSON cut off half-way (a consistent `Content-Length`).
    TruncatedBody,
    /// The connection is dropped without any response.
    ConnectionReset,
    /// The normal response, after this long (for client timeouts).
    Delay(Duration),
    /// The `next` link points to the very same page.
    NextLinkLoop,
    /// An empty page whose `next` link continues where this page should have started.
    EmptyPageWithNext,
}

impl Fault {
    /// A short name used in the counters.
    pub fn kind(&self) -> String {
        match self {
            Fault::Status(code, _) => format!("status_{code}"),
            Fault::HtmlErrorPage => "html_error_page".into(),
            Fault::TruncatedBody => "truncated_body".into(),
            Fault::ConnectionReset => "connection_reset".into(),
            Fault::Delay(_) => "delay".into(),
            Fault::NextLinkLoop => "next_link_loop".into(),
            Fault::EmptyPageWithNext => "empty_page_with_next".into(),
        }
    }
}

/// When a fault rule fires. Search requests are numbered from 1 per rule,
/// counting only the searches the rule applies to (page searches, not
/// `_summary=count`; of one type if the rule names one).
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// On exactly the Nth search.
    Nth(u64),
    /// On every search from the Nth on (a persistently broken upstream).
    From(u64),
    /// On each search with this probability (seeded, so runs repeat when
    /// requests arrive in the same order).
    Probability(f64),
}

/// One fault-injection rule.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// What to inject.
    pub fault: Fault,
    /// When.
    pub trigger: Trigger,
    /// Only searches of this type count and are affected; `None` for all types.
    pub resource_type: Option<String>,
}

impl FaultRule {
    /// `fault` on the Nth search (1-based).
    pub fn nth(n: u64, fault: Fault) -> Self {
        Self {
            fault,
            trigger: Trigger::Nth(n),
            resource_type: None,
        }
    }

    /// `fault` on every search from the Nth on.
    pub fn from(n: u64, fault: Fault) -> Self {
        Self {
            fault,
            trigger: Trigger::From(n),
            resource_type: None,
        }
    }

    /// `fault` on each search with probability `p`.
    pub fn probability(p: f64, fault: Fault) -> Self {
        Self {
            fault,
            trigger: Trigger::Probability(p),
            resource_type: None,
        }
    }

    /// Restricts the rule to searches of one type.
    pub fn for_type(mut self, resource_type: &str) -> Self {
        self.resource_type = Some(resource_type.to_string());
        self
    }
}
