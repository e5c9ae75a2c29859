//! `/v1/analytics/*`: stage funnel, segment sizes, score distribution.

use super::openapi::{Errors, ANALYTICS};
use super::{ApiError, AppState, Auth};
use crate::domain::Role;
use crate::services::{ScoreDistribution, SegmentSize};
use axum::extract::State;
use axum::Json;
use serde::Serialize;

pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(funnel))
        .routes(utoipa_axum::routes!(segments))
        .routes(utoipa_axum::routes!(scores))
}

/// A stage of the lifecycle owner's graph and its customers.
#[derive(Serialize, utoipa::ToSchema)]
struct StageCount {
    id: String,
    label: String,
    label_zh: Option<String>,
    rank: u32,
    customers: i64,
}

/// A stage outside the owner's graph (set by hand, or by a former owner).
#[derive(Serialize, utoipa::ToSchema)]
struct OtherStage {
    id: String,
    customers: i64,
}

/// The stage funnel.
#[derive(Serialize, utoipa::ToSchema)]
struct Funnel {
    /// The plugin that owns the lifecycle, if one does.
    owner: Option<String>,
    /// In the order of the owner's graph.
    stages: Vec<StageCount>,
    no_stage: i64,
    other_stages: Vec<OtherStage>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Segments {
    segments: Vec<SegmentSize>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Scores {
    scores: Vec<ScoreDistribution>,
    /// Open follow-ups due by the end of today (UTC).
    follow_ups_due_today: i64,
}

/// Customers per stage, in the order of the lifecycle owner's graph (viewer).
#[utoipa::path(get, path = "/v1/analytics/funnel", tag = ANALYTICS, security(("bearer" = [])),
    responses((status = 200, description = "The funnel", body = Funnel), Errors))]
async fn funnel(State(s): State<AppState>, auth: Auth) -> Result<Json<Funnel>, ApiError> {
    auth.require(Role::Viewer)?;
    let f = s.crm.reports().funnel(auth.tenant()).await?;
    Ok(Json(Funnel {
        owner: f.owner,
        stages: f
            .stages
            .into_iter()
            .map(|(st, customers)| StageCount {
                id: st.id,
                label: st.label,
                label_zh: st.label_zh,
                rank: st.rank,
                customers,
            })
            .collect(),
        no_stage: f.no_stage,
        other_stages: f
            .other_stages
            .into_iter()
            .map(|(id, customers)| OtherStage { id, customers })
            .collect(),
    }))
}

/// Members per segment (viewer).
#[utoipa::path(get, path = "/v1/analytics/segments", tag = ANALYTICS, security(("bearer" = [])),
    responses((status = 200, description = "Members per segment", body = Segments), Errors))]
async fn segments(State(s): State<AppState>, auth: Auth) -> Result<Json<Segments>, ApiError> {
    auth.require(Role::Viewer)?;
    let segments = s.crm.reports().segment_sizes(auth.tenant()).await?;
    Ok(Json(Segments { segments }))
}

/// Score distributions per plugin, and the follow-ups due today (viewer).
#[utoipa::path(get, path = "/v1/analytics/scores", tag = ANALYTICS, security(("bearer" = [])),
    responses((status = 200, description = "Distributions per plugin", body = Scores), Errors))]
async fn scores(State(s): State<AppState>, auth: Auth) -> Result<Json<Scores>, ApiError> {
    auth.require(Role::Viewer)?;
    let (scores, due) = s.crm.reports().scores(auth.tenant()).await?;
    Ok(Json(Scores {
        scores,
        follow_ups_due_today: due,
    }))
}
