//! `/v1/schedules`: cron schedules that start rescores; `/v1/jobs`: the
//! tenant's recent jobs, those the schedules started among them.

use super::openapi::{Errors, PLUGINS};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, Auth};
use crate::domain::Role;
use crate::services::{Job, Schedule, ScheduleInput};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list_schedules, create_schedule))
        .routes(routes!(get_schedule, delete_schedule))
        .routes(routes!(list_jobs))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Schedules {
    schedules: Vec<Schedule>,
}

/// The tenant's schedules (viewer).
#[utoipa::path(get, path = "/v1/schedules", tag = PLUGINS, security(("bearer" = [])),
    responses((status = 200, description = "The schedules", body = Schedules), Errors))]
async fn list_schedules(
    State(s): State<AppState>,
    auth: Auth,
) -> Result<Json<Schedules>, ApiError> {
    auth.require(Role::Viewer)?;
    let schedules = s.crm.schedules().list(auth.tenant()).await?;
    Ok(Json(Schedules { schedules }))
}

/// Creates a schedule: a cron expression (UTC) whose every occurrence starts a
/// rescore of every customer, once across hosts (admin).
#[utoipa::path(post, path = "/v1/schedules", tag = PLUGINS, security(("bearer" = [])),
    request_body = ScheduleInput,
    responses((status = 201, description = "The schedule, with its first occurrence", body = Schedule), Errors))]
async fn create_schedule(
    State(s): State<AppState>,
    auth: Auth,
    ApiJson(input): ApiJson<ScheduleInput>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    auth.require(Role::Admin)?;
    let schedule = s
        .crm
        .schedules()
        .create(auth.tenant(), &auth.0.token_id, input)
        .await?;
    Ok((StatusCode::CREATED, Json(schedule)))
}

/// A schedule: its next occurrence, the last it ran and the job that started (viewer).
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = PLUGINS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 200, description = "The schedule", body = Schedule), Errors))]
async fn get_schedule(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Schedule>, ApiError> {
    auth.require(Role::Viewer)?;
    s.crm
        .schedules()
        .get(auth.tenant(), &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("schedule {id} not found")))
}

/// Deletes a schedule; jobs it started go on (admin).
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = PLUGINS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_schedule(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    if s.crm
        .schedules()
        .delete(auth.tenant(), &auth.0.token_id, &id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("schedule {id} not found")))
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JobsQuery {
    /// At most this many, newest first (default 50, at most 500).
    limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Jobs {
    jobs: Vec<Job>,
}

/// The tenant's recent jobs, newest first: rescores and dry-runs, those its
/// schedules started among them (`params.schedule`) (viewer).
#[utoipa::path(get, path = "/v1/jobs", tag = PLUGINS, security(("bearer" = [])), params(JobsQuery),
    responses((status = 200, description = "The jobs", body = Jobs), Errors))]
async fn list_jobs(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> Result<Json<Jobs>, ApiError> {
    auth.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            "limit must be between 1 and 500",
        ));
    }
    let jobs = s.crm.jobs().jobs(auth.tenant(), limit).await?;
    Ok(Json(Jobs { jobs }))
}
