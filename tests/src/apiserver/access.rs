//! Who may do what: bearer tokens naming users, RBAC denials set by the test, injected
//! failures, and the log of every request served (what tests assert on).

use std::collections::HashMap;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// The authenticated user; `None` when the token was missing or unknown (401).
    pub user: Option<String>,
    /// RBAC verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group, "" for core.
    pub group: String,
    /// Resource plural (`leases`).
    pub resource: String,
    /// `status` for the status subresource.
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// HTTP status answered (watches: the status the stream started with).
    pub status: u16,
    pub method: String,
    pub path: String,
    /// The raw query string, "" when there was none.
    pub query: String,
}

impl ApiRequest {
    /// `GET /apis/apps/v1/replicasets?watch=true`, for messages.
    pub fn line(&self) -> String {
        format!("{} {}?{}", self.method, self.path, self.query)
    }
}

/// An RBAC denial; `None` fields and `"*"` match anything.
#[derive(Debug, Clone)]
struct Rule {
    user: Option<String>,
    verb: String,
    group: String,
    resource: String,
}

fn matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == value
}

/// Injected failures still to serve.
#[derive(Debug, Clone)]
struct Failure {
    remaining: usize,
    code: u16,
    verb: Option<String>,
    resource: Option<String>,
}

/// Tokens, denials, failures and the request log.
#[derive(Debug, Default)]
pub struct Access {
    tokens: HashMap<String, String>,
    denied: Vec<Rule>,
    failures: Vec<Failure>,
    requests: Vec<ApiRequest>,
}

/// The bearer token the stand-in gives `user`.
pub fn token_for(user: &str) -> String {
    let safe: String = user
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("wave-test-{safe}-{:x}", fnv(user))
}

/// A stable hash so users differing only in punctuation get different tokens.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Access {
    /// Registers `user` and returns its token.
    pub fn register(&mut self, user: &str) -> String {
        let token = token_for(user);
        self.tokens.insert(token.clone(), user.to_string());
        token
    }

    /// The user a bearer token names, if the token is known.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        self.tokens.get(token).cloned()
    }

    pub fn deny(&mut self, user: Option<&str>, verb: &str, group: &str, resource: &str) {
        self.denied.push(Rule {
            user: user.map(str::to_string),
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.to_string(),
        });
    }

    pub fn allow_all(&mut self) {
        self.denied.clear();
    }

    pub fn is_denied(&self, user: &str, verb: &str, group: &str, resource: &str) -> bool {
        self.denied.iter().any(|r| {
            r.user.as_deref().is_none_or(|u| matches(u, user))
                && matches(&r.verb, verb)
                && matches(&r.group, group)
                && matches(&r.resource, resource)
        })
    }

    pub fn fail_next(&mut self, n: usize, code: u16, verb: Option<&str>, resource: Option<&str>) {
        self.failures.push(Failure {
            remaining: n,
            code,
            verb: verb.map(str::to_string),
            resource: resource.map(str::to_string),
        });
    }

    /// The injected failure this request gets, if any (counted down).
    pub fn take_failure(&mut self, verb: &str, resource: &str) -> Option<u16> {
        let failure = self.failures.iter_mut().find(|f| {
            f.remaining > 0
                && f.verb.as_deref().is_none_or(|v| matches(v, verb))
                && f.resource.as_deref().is_none_or(|r| matches(r, resource))
        })?;
        failure.remaining -= 1;
        let code = failure.code;
        self.failures.retain(|f| f.remaining > 0);
        Some(code)
    }

    pub fn record(&mut self, request: ApiRequest) {
        self.requests.push(request);
    }

    pub fn requests(&self) -> Vec<ApiRequest> {
        self.requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_user() {
        let mut access = Access::default();
        let token = access.register("system:serviceaccount:ns:sa");
        assert_eq!(
            access.authenticate(&token).as_deref(),
            Some("system:serviceaccount:ns:sa")
        );
        assert_eq!(access.authenticate("made-up"), None);
        assert_ne!(token_for("a:b"), token_for("a-b"));
    }

    #[test]
    fn denials_match_user_verb_group_and_resource() {
        let mut access = Access::default();
        access.deny(Some("alice"), "create", "coordination.k8s.io", "leases");
        access.deny(None, "*", "apps", "replicasets");
        assert!(access.is_denied("alice", "create", "coordination.k8s.io", "leases"));
        assert!(!access.is_denied("bob", "create", "coordination.k8s.io", "leases"));
        assert!(!access.is_denied("alice", "get", "coordination.k8s.io", "leases"));
        assert!(access.is_denied("bob", "watch", "apps", "replicasets"));
        access.allow_all();
        assert!(!access.is_denied("bob", "watch", "apps", "replicasets"));
    }

    #[test]
    fn injected_failures_run_out() {
        let mut access = Access::default();
        access.fail_next(2, 503, Some("get"), None);
        assert_eq!(access.take_failure("list", "pods"), None);
        assert_eq!(access.take_failure("get", "pods"), Some(503));
        assert_eq!(access.take_failure("get", "leases"), Some(503));
        assert_eq!(access.take_failure("get", "pods"), None);
    }
}
