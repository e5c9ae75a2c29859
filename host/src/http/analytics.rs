//! `/v1/analytics/*`: stage funnel, segment sizes, score distribution.

use super::openapi::{Errors, ANALYTICS};
use super::{ApiError, AppState, Auth};
use crate::model::{now_ms, Role};
use crate::store;
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
    let mut conn = s.crm.store.conn().await?;
    let mut counts = store::stage_counts(&mut conn, auth.tenant()).await?;
    let packs = s.crm.packs.for_tenant(auth.tenant());
    let owner = packs.lifecycle_owner();
    let mut stages = Vec::new();
    if let Some(o) = owner {
        let mut graph = o.plugin.manifest().stages.clone();
        graph.sort_by_key(|st| st.rank);
        for st in graph {
            let n = counts
                .iter()
                .position(|(id, _)| id.as_deref() == Some(st.id.as_str()))
                .map(|i| counts.remove(i).1)
                .unwrap_or(0);
            stages.push(json!({ "id": st.id, "label": st.label, "label_zh": st.label_zh, "rank": st.rank, "customers": n }));
        }
    }
    let no_stage = counts
        .iter()
        .position(|(id, _)| id.is_none())
        .map(|i| counts.remove(i).1)
        .unwrap_or(0);
    // Stages outside the graph (set by hand, or by a former owner).
    let other: Vec<Value> = counts
        .into_iter()
        .map(|(id, n)| json!({ "id": id, "customers": n }))
        .collect();
    Ok(Json(json!({
        "owner": owner.map(|o| o.name().to_string()),
        "stages": stages,
        "no_stage": no_stage,
        "other_stages": other,
    })))
}

/// Members per segment (viewer).
#[utoipa::path(get, path = "/v1/analytics/segments", tag = ANALYTICS, security(("bearer" = [])),
    responses((status = 200, description = "`{segments: [...]}`", body = Object), Errors))]
async fn segments(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let mut conn = s.crm.store.conn().await?;
    let sizes = store::segment_sizes(&mut conn, auth.tenant()).await?;
    Ok(Json(json!({ "segments": sizes })))
}

/// Score distributions per plugin, and the follow-ups due today (viewer).
#[utoipa::path(get, path = "/v1/analytics/scores", tag = ANALYTICS, security(("bearer" = [])),
    responses((status = 200, description = "`{scores: [...], follow_ups_due_today}`", body = Object), Errors))]
async fn scores(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let mut conn = s.crm.store.conn().await?;
    let dist = store::score_distributions(&mut conn, auth.tenant()).await?;
    // Follow-ups due by the end of today (UTC).
    let end_of_today = (crate::model::day_of(now_ms()) + 1) * stagecraft_plugin::snapshot::DAY_MS;
    let due = store::follow_ups_due(&mut conn, auth.tenant(), end_of_today).await?;
    Ok(Json(json!({ "scores": dist, "follow_ups_due_today": due })))
}
