//! `/v1/changes`: the change feed, for clients that pull what changed.

use super::openapi::{Errors, CUSTOMERS};
use super::{ApiError, ApiQuery, AppState, Auth};
use crate::domain::Role;
use crate::services::ChangePage;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::routes;

pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(routes!(list_changes))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ChangesQuery {
    /// The `next` of the previous page (or a change's `cursor`); from the
    /// oldest change kept when absent.
    after: Option<String>,
    /// Only these types, comma-separated (`customer.stage_changed,customer.band_changed`).
    types: Option<String>,
    /// Page size, 1-1000 (default 100).
    limit: Option<i64>,
}

/// The tenant's changes in the order they were committed, a page at a time
/// after a cursor (viewer). Every change to a customer, a follow-up or a
/// plugin's activation is recorded in the transaction that made it: a client
/// that follows `next` hears of each committed change once, in order, and of
/// none that rolled back. Sensitive field values are never included. Changes
/// are kept for the retention (default 30 days).
#[utoipa::path(get, path = "/v1/changes", tag = CUSTOMERS, security(("bearer" = [])),
    params(ChangesQuery),
    responses((status = 200, description = "`{changes: [...], next, more}`: pass `next` as `after` for what comes after; `more` says whether more is waiting now", body = ChangePage), Errors))]
async fn list_changes(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> Result<Json<ChangePage>, ApiError> {
    auth.require(Role::Viewer)?;
    let types: Vec<String> = q.types.into_iter().collect();
    Ok(Json(
        s.crm
            .changes()
            .list(
                auth.tenant(),
                q.after.as_deref(),
                &types,
                q.limit.unwrap_or(100),
            )
            .await?,
    ))
}
