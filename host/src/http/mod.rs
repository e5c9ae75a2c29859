//! The HTTP API (axum). [`app`] builds the whole service; each resource has its
//! module; `error` maps every error to a status and a JSON body. This layer only
//! translates: the work happens in [`crate::crm`], [`crate::pipeline`] and [`crate::store`].

mod analytics;
mod customers;
pub mod error;
mod import;
mod plugins;

pub use error::ApiError;

use crate::model::{Principal, Role};
use crate::{store, Crm};
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;

/// The largest JSON body accepted (imports stream and have no such limit).
pub const JSON_LIMIT: usize = 1 << 20;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub crm: Crm,
}

/// The whole service.
pub fn app(crm: Crm) -> Router {
    let state = AppState { crm };
    Router::new()
        .route("/healthz", get(health))
        .merge(customers::routes())
        .merge(import::routes())
        .merge(analytics::routes())
        .merge(plugins::routes())
        .route("/v1/audit", get(audit))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(JSON_LIMIT))
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.crm
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({ "status": "ok", "database": "ok" })))
}

#[derive(serde::Deserialize)]
struct LimitQuery {
    #[serde(default)]
    limit: Option<i64>,
}

async fn audit(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.require(Role::Admin)?;
    let mut conn = s.crm.store.conn().await?;
    let entries = store::audit_log(
        &mut conn,
        &auth.0.tenant,
        q.limit.unwrap_or(100).clamp(1, 1000),
    )
    .await?;
    Ok(Json(json!({ "entries": entries })))
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
        let mut conn = s.crm.store.conn().await?;
        store::principal(&mut conn, token)
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
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(ApiError::from)
    }
}

/// `Query<T>` whose rejections are our JSON errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
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
    axum::serve(listener, app(crm))
        .with_graceful_shutdown(shutdown)
        .await
}
