//! `/v1/analytics/*`: stage funnel, segment sizes, score distribution.

use super::openapi::{Errors, ANALYTICS};
use super::{ApiError, AppState, Auth};
use crate::domain::Role;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(funnel))
        .routes(utoipa_axum::routes!(segments))
        .routes(utoipa_axum::routes!(scores))
}

/// Customers per stage, in the order of the lifecycle owner's graph (viewer).
#[utoipa::path(get, path = "/v1/analytics/funnel", tag = ANALYTICS, security(("bearer" = [])),
    responses((status = 200, description = "`{owner, stages: [...], no_stage, other_stages}`", body = Object), Errors))]
async fn funnel(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let f = s.crm.reports().funnel(auth.tenant()).await?;
    let stages: Vec<Value> = f
        .stages
        .iter()
        .map(|(st, n)| json!({ "id": st.id, "label": st.label, "label_zh": st.label_zh, "rank": st.rank, "customers": n }))
        .collect();
    let other: Vec<Value> = f
        .other_stages
        .iter()
        .map(|(id, n)| json!({ "id": id, "customers": n }))
        .collect();
    Ok(Json(json!({
        "owner": f.owner,
        "stages": stages,
        "no_stage": f.no_stage,
        "other_stages": other,
    })))
}

/// Members per segment (viewer).
#[utoipa::path(get, path = "/v1/analytics/segments", tag = ANALYTICS, security(("bearer" = [])),
    responses((status = 200, description = "`{segments: [...]}`", body = Object), Errors))]
async fn segments(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let sizes = s.crm.reports().segment_sizes(auth.tenant()).await?;
    Ok(Json(json!({ "segments": sizes })))
}

/// Score distributions per plugin, and the follow-ups due today (viewer).
#[utoipa::path(get, path = "/v1/analytics/scores", tag = ANALYTICS, security(("bearer" = [])),
    responses((status = 200, description = "`{scores: [...], follow_ups_due_today}`", body = Object), Errors))]
async fn scores(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let (dist, due) = s.crm.reports().scores(auth.tenant()).await?;
    Ok(Json(json!({ "scores": dist, "follow_ups_due_today": due })))
}
