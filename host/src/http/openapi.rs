//! `/openapi.json`: the API description, generated from the handlers themselves.
//!
//! Every route is registered through `utoipa_axum::routes!`, which adds the
//! handler's `#[utoipa::path]` to the document in the same call that adds it to
//! the router: a route cannot exist without its description. The test
//! `openapi_lists_every_route` checks the other direction (each described
//! operation answers).

pub use super::error::{ErrorBody, ErrorDetail};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Tags group the operations in the document.
pub const CUSTOMERS: &str = "customers";
pub const PLUGINS: &str = "plugins";
pub const ANALYTICS: &str = "analytics";
pub const ADMIN: &str = "admin";
pub const SERVICE: &str = "service";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stagecraft",
        description = "A CRM core whose segmentation, scoring and lifecycle stages come from sandboxed WebAssembly plugins. \
                       Every route but /healthz, /metrics, /openapi.json and the console needs `Authorization: Bearer <token>`; \
                       errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    components(schemas(ErrorBody, ErrorDetail, crate::services::webhooks::WebhookPayload)),
    modifiers(&BearerAuth),
    tags(
        (name = "customers", description = "Customers, their events and timeline"),
        (name = "plugins", description = "The plugin registry: versions, rule sets, dry-run, activation, rollback, jobs"),
        (name = "analytics", description = "Stage funnel, segment sizes, score distributions"),
        (name = "admin", description = "Tokens and the audit trail"),
        (name = "service", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

/// The document as served: `doc` with the OpenAPI 3.1 `webhooks` object (the
/// messages a webhook subscription receives), which utoipa does not model.
pub fn served(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).expect("the document serialises");
    let header = |name: &str, what: &str| {
        serde_json::json!({"name": name, "in": "header", "required": true,
                           "description": what, "schema": {"type": "string"}})
    };
    v["webhooks"] = serde_json::json!({
        "change": {
            "post": {
                "summary": "A change, sent to every subscription whose types include it",
                "description": "Standard Webhooks: verify `webhook-signature` (`v1,` HMAC-SHA256 of \
                    `{webhook-id}.{webhook-timestamp}.{body}` with the subscription's secret) with any \
                    Standard Webhooks library. Delivered at least once: a redelivery carries the same \
                    `webhook-id`. Answer 2xx within 10 s; anything else is retried with backoff for 3 days. \
                    A customer's changes arrive in order.",
                "parameters": [
                    header("webhook-id", "The change's id: the same on every redelivery"),
                    header("webhook-timestamp", "Seconds since the epoch when this attempt was signed"),
                    header("webhook-signature", "`v1,<base64>`, space-separated; two while a rotated-out secret still signs"),
                ],
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/WebhookPayload"}}}},
                "responses": {"200": {"description": "Received (any 2xx)"}}
            }
        }
    });
    v
}

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A tenant token: `stagecraft token create --tenant T --role R`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The error responses an authenticated route may give; each body is an [`ErrorBody`].
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// The request is malformed: bad JSON, a bad query or header.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No valid bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role does not allow this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Nothing of that id in the caller's tenant.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// It conflicts with what is stored.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is larger than allowed.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Well-formed but invalid: the message names the field.
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// The database is unavailable; try again shortly.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}
