//! The HTTP API (axum). [`app`] builds the whole service; each resource has its
//! module; `error` maps every error to a status and a JSON body. This layer only
//! translates: the work happens in [`crate::services`].

mod analytics;
mod changes;
mod console;
mod customers;
pub mod error;
mod import;
pub mod openapi;
mod plugins;
mod schedules;
mod webhooks;
pub mod wire;

pub use error::ApiError;

use crate::domain::{Principal, Role};
use crate::services::RenderedReason;
use crate::Crm;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::{Json, Router};
use openapi::{Errors, ADMIN, SERVICE};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The largest JSON body accepted (imports stream and have no such limit).
pub const JSON_LIMIT: usize = 1 << 20;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub crm: Crm,
}

/// The API's routes and, built from the same calls, their OpenAPI description.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(metrics))
        .merge(customers::routes())
        .merge(import::routes())
        .merge(analytics::routes())
        .merge(plugins::routes())
        .merge(schedules::routes())
        .merge(changes::routes())
        .merge(webhooks::routes())
        .routes(routes!(me))
        .routes(routes!(audit))
        .routes(routes!(create_token))
        .routes(routes!(revoke_token))
        .split_for_parts()
}

/// The whole service.
pub fn app(crm: Crm) -> Router {
    let state = AppState { crm };
    let (api, mut doc) = api();
    doc.paths.paths.insert(
        "/openapi.json".into(),
        utoipa::openapi::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .tag(SERVICE)
                .summary(Some("This document"))
                .response(
                    "200",
                    utoipa::openapi::Response::new("The OpenAPI 3.1 description"),
                ),
        ),
    );
    let doc = Arc::new(openapi::served(&doc));
    api.merge(console::routes())
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(JSON_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe_request,
        ))
        // Outermost last: a client's unusable id is dropped, a missing one made,
        // and the id echoed on the response (tower-http).
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), NewRequestId))
        .layer(axum::middleware::map_request(drop_unusable_request_id))
        .with_state(state)
}

static REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// A fresh request id: a UUIDv7, so ids sort by time.
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        axum::http::HeaderValue::from_str(&uuid::Uuid::now_v7().simple().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// A client's `X-Request-Id` is kept only if it is short and plain; otherwise
/// it is dropped and a fresh one made (it goes into every log line).
async fn drop_unusable_request_id(mut req: Request) -> Request {
    let usable = req
        .headers()
        .get(&REQUEST_ID)
        .map(|v| v.to_str().is_ok_and(acceptable_request_id));
    if usable == Some(false) {
        req.headers_mut().remove(&REQUEST_ID);
    }
    req
}

/// Prometheus metrics (unauthenticated, like /healthz: no customer data in it).
#[utoipa::path(get, path = "/metrics", tag = SERVICE,
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(s): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.crm.packs().metrics().render(),
    )
}

/// What a client may send as `X-Request-Id` and have echoed (else one is made).
fn acceptable_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Every request: its request id (set by the layers above) on a span that every
/// log line of the request carries; one log line when it is served; counted by its route pattern
/// (not its path: ids would explode the label set), method and status, and timed.
async fn observe_request(
    State(s): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // A label from a fixed set: a client may send any method token, and each
    // new label value would be a new series in /metrics for ever.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let started = std::time::Instant::now();
    let request_method = req.method().clone();
    let mut resp = next.run(req).instrument(span.clone()).await;
    // The router answers a wrong method on a known route with an empty 405; the
    // API answers every error as its JSON error.
    if resp.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED
        && !resp
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        let allow = resp.headers().get(axum::http::header::ALLOW).cloned();
        let mut json = ApiError::MethodNotAllowed(format!(
            "{} is not allowed on {route}{}",
            request_method.as_str().chars().take(32).collect::<String>(),
            allow
                .as_ref()
                .and_then(|a| a.to_str().ok())
                .map(|a| format!("; allowed: {a}"))
                .unwrap_or_default()
        ))
        .into_response();
        if let Some(a) = allow {
            json.headers_mut().insert(axum::http::header::ALLOW, a);
        }
        resp = json;
    }
    let elapsed = started.elapsed();
    let m = s.crm.packs().metrics();
    m.http_seconds
        .with_label_values(&[&route])
        .observe(elapsed.as_secs_f64());
    m.http_requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    let status = resp.status().as_u16();
    let ms = elapsed.as_secs_f64() * 1e3;
    span.in_scope(|| {
        // Scrapes and probes are frequent and dull.
        if route == "/metrics" || route == "/healthz" {
            tracing::debug!(status, ms, "served");
        } else {
            tracing::info!(status, ms, "served");
        }
    });
    resp
}

/// The service's health.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`.
    status: &'static str,
    /// `ok`: the database answered.
    database: &'static str,
}

/// Whether the service and its database answer.
#[utoipa::path(get, path = "/healthz", tag = SERVICE,
    responses((status = 200, description = "Both answer", body = Health),
              (status = 503, description = "The database is unavailable", body = openapi::ErrorBody)))]
async fn health(State(s): State<AppState>) -> Result<Json<Health>, ApiError> {
    s.crm
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(Health {
        status: "ok",
        database: "ok",
    }))
}

/// Who is calling.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Me {
    tenant: String,
    role: Role,
    token_id: String,
}

/// The caller: tenant, role and token id (viewer). The console signs in with it.
#[utoipa::path(get, path = "/v1/me", tag = ADMIN, security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = Me), Errors))]
async fn me(auth: Auth) -> Result<Json<Me>, ApiError> {
    auth.require(Role::Viewer)?;
    Ok(Json(Me {
        tenant: auth.0.tenant,
        role: auth.0.role,
        token_id: auth.0.token_id,
    }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    /// Entries, newest first, 1-1000 (default 100).
    #[serde(default)]
    limit: Option<i64>,
}

/// The newest entries of the audit trail.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct AuditLog {
    /// Newest first.
    entries: Vec<crate::services::AuditEntry>,
}

/// The audit trail: uploads, rule sets, activations, rollbacks, suspensions, grants, tokens (admin).
#[utoipa::path(get, path = "/v1/audit", tag = ADMIN, security(("bearer" = [])), params(LimitQuery),
    responses((status = 200, description = "The entries", body = AuditLog), Errors))]
async fn audit(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<Json<AuditLog>, ApiError> {
    auth.require(Role::Admin)?;
    let entries = s
        .crm
        .reports()
        .audit_log(&auth.0.tenant, q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    Ok(Json(AuditLog { entries }))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    role: Role,
    /// What the token is for, up to 200 bytes.
    #[serde(default)]
    label: Option<String>,
}

/// Creates a token for the caller's tenant (admin); the secret is shown once.
#[utoipa::path(post, path = "/v1/tokens", tag = ADMIN, security(("bearer" = [])), request_body = NewTokenBody,
    responses((status = 201, description = "The token: its secret is shown only here", body = crate::services::NewToken), Errors))]
async fn create_token(
    State(s): State<AppState>,
    auth: Auth,
    ApiJson(b): ApiJson<NewTokenBody>,
) -> Result<(axum::http::StatusCode, Json<crate::services::NewToken>), ApiError> {
    auth.require(Role::Admin)?;
    let label = b.label.unwrap_or_else(|| "api".into());
    let t = s
        .crm
        .tokens()
        .create(auth.tenant(), &auth.0.token_id, b.role, &label)
        .await?;
    Ok((axum::http::StatusCode::CREATED, Json(t)))
}

/// A revoked token.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Revoked {
    /// The token's id.
    revoked: String,
}

/// Revokes a token of the caller's tenant (admin); it stops working at once.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = ADMIN, security(("bearer" = [])),
    params(("id" = String, Path, description = "Token id")),
    responses((status = 200, description = "The token's id", body = Revoked), Errors))]
async fn revoke_token(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Revoked>, ApiError> {
    auth.require(Role::Admin)?;
    s.crm
        .tokens()
        .revoke(auth.tenant(), &auth.0.token_id, &id)
        .await?;
    Ok(Json(Revoked { revoked: id }))
}

/// The caller, from `Authorization: Bearer <token>`.
pub struct Auth(pub Principal);

impl Auth {
    /// Fails with 403 unless the caller's role includes `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} role; the token has {}",
                role.as_str(),
                self.0.role.as_str()
            )))
        }
    }
    pub fn tenant(&self) -> &str {
        &self.0.tenant
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or(ApiError::Unauthorized)?;
        s.crm
            .tokens()
            .principal(token)
            .await?
            .map(Auth)
            .ok_or(ApiError::Unauthorized)
    }
}

/// `Json<T>` whose rejections are our JSON errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Read (and over the limit, drain) the body first, so that a 413 reaches
        // a client that is still sending instead of a closed connection.
        let (parts, body) = req.into_parts();
        let bytes = read_bounded(body, JSON_LIMIT).await?.ok_or_else(|| {
            ApiError::TooLarge(format!("the body is larger than {JSON_LIMIT} bytes"))
        })?;
        if let Some(at) = escaped_nul(&bytes) {
            return Err(no_nul(format!("a string in the body (at byte {at})")));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(ApiError::from)
    }
}

/// Where a JSON text holds a NUL character in a string (`\u0000`: JSON has no
/// other way to write one), if anywhere. Text with NUL cannot be stored by
/// PostgreSQL and is never meant, so every JSON body and query refuses it up front.
pub fn escaped_nul(json: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(b"0000") {
                return Some(i);
            }
            // Any other escape, `\\` included, is two bytes long.
            i += 2;
            continue;
        }
        i += 1;
    }
    None
}

/// The error for a NUL character in `what`.
pub fn no_nul(what: String) -> ApiError {
    ApiError::bad_request(
        "nul_character",
        format!("{what} contains a NUL character (\\u0000), which text may not hold"),
    )
}

/// The body if it is at most `limit` bytes, else `None` — after reading on (and
/// discarding) up to four times the limit: answering while the client still
/// sends would close the connection under it and lose the answer.
pub async fn read_bounded(
    body: axum::body::Body,
    limit: usize,
) -> Result<Option<Vec<u8>>, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let (mut bytes, mut seen) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("bad_body", e.to_string()))?;
        seen += chunk.len();
        if seen <= limit {
            bytes.extend_from_slice(&chunk);
        } else if seen > 4 * limit {
            break;
        }
    }
    Ok((seen <= limit).then_some(bytes))
}

/// Reads and drops a body that will be refused, without keeping any of it (up to
/// four times `limit`, as [`read_bounded`] does), so that the refusal reaches a
/// client that is still sending.
pub async fn discard(body: axum::body::Body, limit: usize) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > 4 * limit {
            break;
        }
    }
}

/// `Path<T>` whose rejections are our JSON errors.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if parts.uri.path().to_ascii_lowercase().contains("%00") {
            return Err(no_nul("the path".into()));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(ApiError::from)
    }
}

/// `Query<T>` whose rejections are our JSON errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        if let Some((k, _)) = form_urlencoded::parse(query.as_bytes())
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(no_nul(format!(
                "the query parameter {:?}",
                k.replace('\0', "")
            )));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(ApiError::from)
    }
}

/// Serves the app on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    crm: Crm,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(wire::JsonErrorsListener(listener), app(crm))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `?lang=en|zh`: the language reasons are rendered in.
#[derive(serde::Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LangQuery {
    /// `en` (default) or `zh`: the language of the reasons.
    #[serde(default)]
    pub lang: Option<String>,
}

impl LangQuery {
    pub fn lang(&self) -> Result<crate::runtime::Lang, ApiError> {
        match self.lang.as_deref() {
            None | Some("en") => Ok(crate::runtime::Lang::En),
            Some("zh") => Ok(crate::runtime::Lang::Zh),
            Some(other) => Err(ApiError::bad_request(
                "bad_query",
                format!("lang {other:?} is not en or zh"),
            )),
        }
    }
}

/// Re-renders the reasons of a response in `lang`, with the texts of the plugin
/// that gave each (a reason of a plugin no longer enabled keeps its stored
/// English). Works on the typed response, before it is serialised.
pub trait Translate {
    fn translate(&mut self, packs: &crate::packs::TenantPacks, lang: crate::runtime::Lang);
}

fn manifest_of<'a>(
    packs: &'a crate::packs::TenantPacks,
    plugin: &str,
) -> Option<&'a crate::domain::Manifest> {
    packs
        .packs
        .iter()
        .find(|x| x.name() == plugin)
        .map(|x| x.plugin.manifest())
}

fn rerender(m: &crate::domain::Manifest, r: &mut RenderedReason, lang: crate::runtime::Lang) {
    r.text = m.render(
        &crate::domain::Reason {
            code: r.code.clone(),
            points: r.points,
            args: r.args.clone(),
        },
        lang,
    );
}

impl Translate for crate::services::CustomerView {
    fn translate(&mut self, packs: &crate::packs::TenantPacks, lang: crate::runtime::Lang) {
        if lang == crate::runtime::Lang::En {
            return;
        }
        for s in self.scores.values_mut() {
            if let Some(m) = manifest_of(packs, &s.plugin) {
                s.reasons.iter_mut().for_each(|r| rerender(m, r, lang));
            }
        }
        for seg in &mut self.segments {
            if let Some(m) = manifest_of(packs, &seg.plugin) {
                rerender(m, &mut seg.reason, lang);
            }
        }
    }
}

impl Translate for Vec<crate::services::TimelineEntry> {
    fn translate(&mut self, packs: &crate::packs::TenantPacks, lang: crate::runtime::Lang) {
        use crate::services::TimelineEntry;
        if lang == crate::runtime::Lang::En {
            return;
        }
        for e in self.iter_mut() {
            match e {
                TimelineEntry::StageMove {
                    reason,
                    reason_detail,
                    plugin,
                    ..
                } => {
                    let detail: Option<crate::domain::Reason> =
                        serde_json::from_value(reason_detail.clone()).ok();
                    if let (Some(m), Some(r)) = (manifest_of(packs, plugin), detail) {
                        *reason = m.render(&r, lang);
                    }
                }
                TimelineEntry::ScoreChange {
                    plugin, reasons, ..
                } => {
                    if let Some(m) = manifest_of(packs, plugin) {
                        reasons.iter_mut().for_each(|r| rerender(m, r, lang));
                    }
                }
                _ => {}
            }
        }
    }
}
