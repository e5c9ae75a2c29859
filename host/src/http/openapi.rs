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
    components(schemas(ErrorBody, ErrorDetail)),
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
