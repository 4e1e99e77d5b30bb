//! Failures as the real server reports them: a `meta/v1` `Status` with `reason`, `code`,
//! `details` and the message that `kubectl` prints, built the way apimachinery's
//! `k8s.io/apimachinery/pkg/api/errors` constructors build theirs.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// One `details.causes` entry of an `Invalid` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`...
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

/// An answer other than success.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `Retry-After` seconds (429 and 503 answers).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        ApiError {
            code,
            reason,
            message,
            details,
            retry_after: None,
        }
    }

    /// `details` naming an object the way apimachinery does: the resource plural as
    /// `kind`, the group left out for the core group.
    fn object_details(resource: &ResourceType, name: &str) -> Value {
        let mut details = json!({"name": name, "kind": resource.plural});
        if !resource.group.is_empty() {
            details["group"] = json!(resource.group);
        }
        details
    }

    pub fn not_found(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified()),
            Some(Self::object_details(resource, name)),
        )
    }

    pub fn already_exists(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified()),
            Some(Self::object_details(resource, name)),
        )
    }

    /// A failed optimistic-concurrency or precondition check; `why` follows the colon.
    pub fn conflict(resource: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                resource.qualified()
            ),
            Some(Self::object_details(resource, name)),
        )
    }

    /// The update conflict every controller retries on.
    pub fn modified(resource: &ResourceType, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(resource: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        let listed: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let summary = match listed.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut details = json!({
            "name": name,
            "kind": resource.kind,
            "causes": causes.iter().map(|c| json!({
                "reason": c.reason, "message": c.message, "field": c.field
            })).collect::<Vec<_>>(),
        });
        if !resource.group.is_empty() {
            details["group"] = json!(resource.group);
        }
        Self::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {summary}",
                resource.qualified_kind()
            ),
            Some(details),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), None)
    }

    /// RBAC's answer; `name` is empty for collection requests.
    pub fn forbidden(resource: &ResourceType, name: &str, why: &str) -> Self {
        let subject = if name.is_empty() {
            resource.qualified()
        } else {
            format!("{} \"{name}\"", resource.qualified())
        };
        Self::new(
            403,
            "Forbidden",
            format!("{subject} is forbidden: {why}"),
            Some(Self::object_details(resource, name)),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".to_string(), None)
    }

    /// A watch or continue token older than the kept history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message.into(), None)
    }

    /// A path that names no served resource.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".to_string(),
            Some(
                json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}),
            ),
        )
    }

    pub fn method_not_allowed(verb: &str, resource: &ResourceType) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({verb} {})",
                resource.qualified()
            ),
            None,
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
            None,
        )
    }

    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1 (got {accept:?})"
            ),
            None,
        )
    }

    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728".to_string(),
            None,
        )
    }

    /// An injected failure (500, 503, 429...), with the reason the real server gives that
    /// code and, for 429 and 503, a `Retry-After` of one second.
    pub fn injected(code: u16) -> Self {
        let (reason, message) = match code {
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            503 => ("ServiceUnavailable", "The server is currently unavailable"),
            504 => (
                "Timeout",
                "The server was unable to return a response in the time allotted, but may still be processing the request",
            ),
            _ => ("InternalError", "Internal error occurred: injected failure"),
        };
        let retry_after = matches!(code, 429 | 503).then_some(1);
        let details = retry_after.map(|s| json!({"retryAfterSeconds": s}));
        ApiError {
            retry_after,
            ..Self::new(code, reason, message.to_string(), details)
        }
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{RESOURCES, by_kind};

    fn leases() -> &'static ResourceType {
        &RESOURCES[by_kind("coordination.k8s.io/v1", "Lease").expect("leases")]
    }

    #[test]
    fn already_exists_names_the_qualified_resource() {
        let status = ApiError::already_exists(leases(), "x").to_status();
        assert_eq!(
            status["message"],
            "leases.coordination.k8s.io \"x\" already exists"
        );
        assert_eq!(
            status["details"],
            json!({"name": "x", "group": "coordination.k8s.io", "kind": "leases"})
        );
        assert_eq!(status["code"], 409);
    }

    #[test]
    fn core_resources_have_no_group_in_details() {
        let pods = &RESOURCES[by_kind("v1", "Pod").expect("pods")];
        let status = ApiError::not_found(pods, "p").to_status();
        assert_eq!(status["message"], "pods \"p\" not found");
        assert_eq!(status["details"], json!({"name": "p", "kind": "pods"}));
    }

    #[test]
    fn several_invalid_fields_are_listed_in_brackets() {
        let cause = |field: &str| Cause {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: "bad".to_string(),
        };
        let one = ApiError::invalid(leases(), "x", vec![cause("a")]);
        assert_eq!(
            one.message,
            "Lease.coordination.k8s.io \"x\" is invalid: a: bad"
        );
        let two = ApiError::invalid(leases(), "x", vec![cause("a"), cause("b")]);
        assert_eq!(
            two.message,
            "Lease.coordination.k8s.io \"x\" is invalid: [a: bad, b: bad]"
        );
    }

    #[test]
    fn throttling_says_when_to_retry() {
        let error = ApiError::injected(429);
        assert_eq!(error.retry_after, Some(1));
        assert_eq!(error.to_status()["details"]["retryAfterSeconds"], 1);
        assert_eq!(ApiError::injected(500).retry_after, None);
    }
}
