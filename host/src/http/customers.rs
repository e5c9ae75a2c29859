//! `/v1/customers`: create, read, update, list; events; the timeline.

use super::{translate, ApiError, ApiJson, ApiQuery, AppState, Auth, LangQuery};
use crate::crm::{CustomerInput, CustomerPatch};
use crate::model::Role;
use crate::pipeline::EventInput;
use crate::store::{self, CustomerFilter};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/customers", post(create).get(list))
        .route("/v1/customers/{id}", get(read).patch(update))
        .route("/v1/customers/{id}/events", post(record_event))
        .route("/v1/customers/{id}/timeline", get(timeline))
        .route(
            "/v1/customers/{id}/follow-ups/{follow_up}/done",
            post(follow_up_done),
        )
}

async fn create(
    State(s): State<AppState>,
    auth: Auth,
    ApiJson(input): ApiJson<CustomerInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Agent)?;
    let id = s.crm.create_customer(auth.tenant(), input).await?;
    let view = s.crm.customer_view(auth.tenant(), &id).await?;
    Ok((StatusCode::CREATED, Json(json!(view))))
}

async fn read(
    State(s): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LangQuery>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let lang = q.lang()?;
    let mut v = json!(s.crm.customer_view(auth.tenant(), &id).await?);
    translate(&mut v, &s.crm.packs.for_tenant(auth.tenant()), lang);
    Ok(Json(v))
}

async fn update(
    State(s): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<CustomerPatch>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Agent)?;
    s.crm.update_customer(auth.tenant(), &id, patch).await?;
    Ok(Json(json!(s.crm.customer_view(auth.tenant(), &id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    stage: Option<String>,
    segment: Option<String>,
    tag: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            "limit must be between 1 and 500",
        ));
    }
    let f = CustomerFilter {
        stage: q.stage,
        segment: q.segment,
        tag: q.tag,
        after: q.after,
        limit,
    };
    let mut conn = s.crm.store.conn().await?;
    let rows = store::list_customers(&mut conn, auth.tenant(), &f).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id.clone()));
    Ok(Json(json!({ "customers": rows, "next": next.flatten() })))
}

async fn record_event(
    State(s): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<EventInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Agent)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("bad_header", "Idempotency-Key must be ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let outcome = s
        .crm
        .record_event(auth.tenant(), &id, &input, key.as_deref(), None)
        .await?;
    let status = if outcome.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!(outcome))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    limit: Option<i64>,
    lang: Option<String>,
}

async fn timeline(
    State(s): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TimelineQuery>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut conn = s.crm.store.conn().await?;
    if !store::customer_exists(&mut conn, auth.tenant(), &id).await? {
        return Err(ApiError::NotFound(format!("customer {id} not found")));
    }
    let lang = LangQuery { lang: q.lang }.lang()?;
    let entries = store::timeline(&mut conn, auth.tenant(), &id, limit).await?;
    let mut v = json!({ "customer_id": id, "entries": entries });
    translate(&mut v, &s.crm.packs.for_tenant(auth.tenant()), lang);
    Ok(Json(v))
}

/// Marks a follow-up done: staff contacted the customer.
async fn follow_up_done(
    State(s): State<AppState>,
    auth: Auth,
    Path((id, follow_up)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Agent)?;
    let mut tx = s.crm.store.begin().await?;
    if !store::complete_follow_up(
        tx.conn(),
        auth.tenant(),
        &id,
        follow_up,
        crate::model::now_ms(),
    )
    .await?
    {
        return Err(ApiError::NotFound(format!(
            "open follow-up {follow_up} of customer {id} not found"
        )));
    }
    tx.commit().await?;
    Ok(Json(json!(s.crm.customer_view(auth.tenant(), &id).await?)))
}
