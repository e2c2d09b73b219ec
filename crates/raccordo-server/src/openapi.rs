//! The OpenAPI 3.1 document of the HTTP API. Operations come from the handlers'
//! `#[utoipa::path]` attributes, registered together with their routes (see
//! `routes::ApiRouter`); this module adds what is shared: the API's description, its
//! security schemes, the built-in conversion event schema, and the problem answers any
//! operation can give.

use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::problem::{ParameterError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "raccordo",
        description = "Self-hosted CRM event and integration hub: ingestion, live metrics, alerts. \
            Errors are `application/problem+json` (RFC 9457) with a stable `type`, the failing \
            field's JSON pointer (`errors`) or query parameter (`parameters`), and no echo of \
            the values sent.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem, ParameterError, raccordo_ingest::FieldError)),
    tags(
        (name = "ingest", description = "Events in: conversion events and configured sources"),
        (name = "events", description = "Stored events"),
        (name = "metrics", description = "Live event-time window metrics and campaign spend"),
        (name = "alerts", description = "Alert history and the dead-letter queue"),
        (name = "crm", description = "HubSpot and Zoho CRM change notifications for the sync"),
        (name = "flows", description = "AI flows: runs, run history, replay and async jobs"),
        (name = "privacy", description = "A customer's data: export and erasure (GDPR)"),
        (name = "security", description = "Addresses blocked after repeated authentication failures"),
        (name = "operations", description = "Health, readiness, Prometheus, the dashboard"),
    ),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        let bearer = |format: Option<&str>, description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format.map(str::to_string).unwrap_or_default())
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "admin_token",
            bearer(None, "An admin token from `[[admin.tokens]]`: scope `read` for reading, `admin` for changes"),
        );
        components.add_security_scheme(
            "jwt",
            bearer(
                Some("JWT"),
                "A JWT signed for the source (HS256, RS256, ES256)",
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "An API key of the source",
            ))),
        );
        components.add_security_scheme(
            "standard_webhooks",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "Standard Webhooks: `webhook-id`, `webhook-timestamp` and `webhook-signature` (v1, HMAC-SHA256)",
            ))),
        );
        components.add_security_scheme(
            "hubspot_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-HubSpot-Signature-v3",
                "HubSpot's v3 signature (with `X-HubSpot-Request-Timestamp`), keyed by the app's client secret; v1/v2 `X-HubSpot-Signature` for older apps",
            ))),
        );
    }
}

/// The document's fixed part, before the routes add their operations.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut api = ApiDoc::openapi();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    api
}

/// Problem answers any operation may give (the HTTP layer's own: a malformed request, an
/// unknown path, a body over the limit, an overloaded or draining server).
const COMMON: &[(&str, &str)] = &[
    (
        "400",
        "The request is malformed (a query parameter, a path segment, the JSON)",
    ),
    ("404", "No such resource"),
    ("413", "The body is larger than the server accepts"),
    (
        "503",
        "Unavailable for now (store full or stopped, shutting down, timed out); see `Retry-After`",
    ),
];
/// What an authenticated operation may answer besides.
const AUTH: &[(&str, &str)] = &[
    ("401", "Credentials missing or wrong"),
    (
        "403",
        "The credentials do not allow this (scope, or a disabled source)",
    ),
    (
        "429",
        "Too many requests: over a rate limit, or the address is blocked after repeated authentication failures; see `Retry-After`",
    ),
];

/// Finishes the generated document: the built-in conversion event schema as the body of
/// the conversion route, and the shared problem answers on every operation.
pub fn finish(api: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(&api).unwrap_or_else(|_| json!({}));
    let mut schema: Value =
        serde_json::from_str(raccordo_ingest::CONVERSION_SCHEMA).unwrap_or_else(|_| json!({}));
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("$id");
    }
    doc["components"]["schemas"]["ConversionEvent"] = schema;
    let types: Vec<Value> = crate::problem::PROBLEM_TYPES
        .iter()
        .map(|(slug, _)| json!(format!("urn:raccordo:problem:{slug}")))
        .collect();
    let meanings: Vec<String> = crate::problem::PROBLEM_TYPES
        .iter()
        .map(|(slug, meaning)| format!("- `urn:raccordo:problem:{slug}`: {meaning}"))
        .collect();
    doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"] = json!(types);
    doc["components"]["schemas"]["Problem"]["properties"]["type"]["description"] = json!(format!(
        "The problem type, stable:\n{}",
        meanings.join("\n")
    ));
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
        })
    };
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(operations) = item.as_object_mut() else {
                continue;
            };
            for (_method, operation) in operations.iter_mut() {
                let secured = operation
                    .get("security")
                    .and_then(Value::as_array)
                    .is_some_and(|s| !s.is_empty());
                let responses = &mut operation["responses"];
                for (status, description) in COMMON.iter().chain(if secured { AUTH } else { &[] }) {
                    if responses.get(*status).is_none() {
                        responses[*status] = problem(description);
                    }
                }
                if path == "/api/v1/eventi/conversione" {
                    operation["requestBody"]["content"]["application/json"]["schema"] = json!({
                        "oneOf": [
                            { "$ref": "#/components/schemas/ConversionEvent" },
                            { "type": "array", "maxItems": 1000,
                              "items": { "$ref": "#/components/schemas/ConversionEvent" } }
                        ]
                    });
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_every_operation_documents_its_problems() {
        let (_router, doc) = crate::routes::router(false);
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().unwrap();
        for wanted in [
            "/api/v1/eventi/conversione",
            "/webhooks/in/{source}",
            "/api/v1/events",
            "/api/v1/metrics",
            "/api/v1/metrics/stream",
            "/api/v1/campaigns/{id}/costs",
            "/api/v1/alerts",
            "/api/v1/ingest/health",
            "/api/v1/dlq",
            "/api/v1/dlq/{id}/replay",
            "/healthz",
            "/readyz",
            "/metrics",
            "/",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(wanted), "{wanted} missing");
        }
        assert!(
            !paths.contains_key("/_bench/noop"),
            "bench route off by default"
        );
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["responses"]["400"].is_object(), "{method} {path}");
            }
        }
        let ingest = &doc["paths"]["/api/v1/eventi/conversione"]["post"]["responses"];
        for status in ["202", "409", "415", "422", "429", "401"] {
            assert!(ingest[status].is_object(), "ingest answers {status}");
        }
        assert_eq!(
            ingest["202"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/IngestAnswer"
        );
        let events = &doc["paths"]["/api/v1/events"]["get"];
        assert!(events["responses"]["401"].is_object());
        assert_eq!(
            doc["components"]["schemas"]["ConversionEvent"]["properties"]["canale"]["enum"][0],
            "email"
        );
        let types = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
            .as_array()
            .unwrap();
        assert!(types.contains(&json!("urn:raccordo:problem:validation-failed")));
        assert_eq!(types.len(), crate::problem::PROBLEM_TYPES.len());
    }
}
