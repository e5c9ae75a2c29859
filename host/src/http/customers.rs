//! `/v1/customers`: create, read, update, list; events; the timeline.

use super::openapi::{Errors, CUSTOMERS};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, Auth, LangQuery, Translate};
use crate::domain::Role;
use crate::pipeline::{EventInput, EventOutcome};
use crate::services::{
    CustomerFilter, CustomerInput, CustomerPatch, CustomerSummary, CustomerView, TimelineEntry,
    WorkList,
};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, update))
        .routes(routes!(record_event))
        .routes(routes!(timeline))
        .routes(routes!(follow_up_done))
        .routes(routes!(follow_up_snooze))
        .routes(routes!(work_list))
}

/// Creates a customer (agent).
#[utoipa::path(post, path = "/v1/customers", tag = CUSTOMERS, security(("bearer" = [])),
    request_body = CustomerInput,
    responses((status = 201, description = "The customer as stored, with what the plugins made of it", body = CustomerView), Errors))]
async fn create(
    State(s): State<AppState>,
    auth: Auth,
    ApiJson(input): ApiJson<CustomerInput>,
) -> Result<(StatusCode, Json<CustomerView>), ApiError> {
    auth.require(Role::Agent)?;
    let id = s
        .crm
        .customers()
        .create_customer(auth.tenant(), input)
        .await?;
    let view = s.crm.customers().customer_view(auth.tenant(), &id).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One customer: fields, stage, scores with reasons, segments, tags, follow-ups (viewer).
#[utoipa::path(get, path = "/v1/customers/{id}", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Customer id"), LangQuery),
    responses((status = 200, description = "The customer", body = CustomerView), Errors))]
async fn read(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LangQuery>,
) -> Result<Json<CustomerView>, ApiError> {
    auth.require(Role::Viewer)?;
    let lang = q.lang()?;
    let mut v = s.crm.customers().customer_view(auth.tenant(), &id).await?;
    v.translate(&s.crm.tenant_packs(auth.tenant()), lang);
    Ok(Json(v))
}

/// Changes a customer: fields, tags, stage by hand (agent).
#[utoipa::path(patch, path = "/v1/customers/{id}", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Customer id")),
    request_body = CustomerPatch,
    responses((status = 200, description = "The customer after the change", body = CustomerView), Errors))]
async fn update(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<CustomerPatch>,
) -> Result<Json<CustomerView>, ApiError> {
    auth.require(Role::Agent)?;
    s.crm
        .customers()
        .update_customer(auth.tenant(), &id, patch)
        .await?;
    Ok(Json(
        s.crm.customers().customer_view(auth.tenant(), &id).await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only customers in this stage.
    stage: Option<String>,
    /// Only members of this segment.
    segment: Option<String>,
    /// Only customers with this tag.
    tag: Option<String>,
    /// A piece of the id or the name, any case.
    q: Option<String>,
    /// With `min_score`/`max_score`: whose score of this plugin (default: any plugin).
    score_plugin: Option<String>,
    /// Only customers with a score at least this.
    min_score: Option<f64>,
    /// Only customers with a score at most this.
    max_score: Option<f64>,
    /// Page size, 1-500 (default 50).
    limit: Option<i64>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
}

/// A page of customers.
#[derive(Serialize, utoipa::ToSchema)]
struct CustomerPage {
    customers: Vec<CustomerSummary>,
    /// The cursor of the next page (`after`), or null on the last.
    next: Option<String>,
}

/// Customers, filtered, a page at a time in id order (viewer).
#[utoipa::path(get, path = "/v1/customers", tag = CUSTOMERS, security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, description = "`{customers: [...], next}`; `next` is the cursor of the next page or null", body = CustomerPage), Errors))]
async fn list(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<CustomerPage>, ApiError> {
    auth.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            "limit must be between 1 and 500",
        ));
    }
    for (name, v) in [("min_score", q.min_score), ("max_score", q.max_score)] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("{name} must be a finite number"),
            ));
        }
    }
    if q.q.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(ApiError::bad_request(
            "bad_query",
            "q is longer than 200 bytes",
        ));
    }
    let f = CustomerFilter {
        stage: q.stage,
        segment: q.segment,
        tag: q.tag,
        text: q.q.filter(|t| !t.is_empty()),
        score_plugin: q.score_plugin,
        min_score: q.min_score,
        max_score: q.max_score,
        after: q.after,
        limit,
    };
    let rows = s.crm.customers().list(auth.tenant(), &f).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id.clone()));
    Ok(Json(CustomerPage {
        customers: rows,
        next: next.flatten(),
    }))
}

/// Records an event; the enabled plugins score, segment and stage the customer in
/// the same transaction (agent). An `Idempotency-Key` makes a retry safe.
#[utoipa::path(post, path = "/v1/customers/{id}/events", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Customer id"),
           ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first response")),
    request_body = EventInput,
    responses((status = 201, description = "Recorded: the event and what each plugin did", body = EventOutcome),
              (status = 200, description = "A replay of an idempotency key: the stored response", body = EventOutcome), Errors))]
async fn record_event(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<EventInput>,
) -> Result<(StatusCode, Json<EventOutcome>), ApiError> {
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
        .events()
        .record_event(auth.tenant(), &id, &input, key.as_deref(), None)
        .await?;
    let status = if outcome.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(outcome)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TimelineQuery {
    /// Entries, newest first, 1-1000 (default 100).
    limit: Option<i64>,
    /// `en` (default) or `zh`: the language of the reasons.
    lang: Option<String>,
}

/// A customer's timeline.
#[derive(Serialize, utoipa::ToSchema)]
struct Timeline {
    customer_id: String,
    /// Newest first.
    entries: Vec<TimelineEntry>,
}

/// Events, stage moves, score changes and plugin failures, newest first (viewer).
#[utoipa::path(get, path = "/v1/customers/{id}/timeline", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Customer id"), TimelineQuery),
    responses((status = 200, description = "The entries, newest first", body = Timeline), Errors))]
async fn timeline(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TimelineQuery>,
) -> Result<Json<Timeline>, ApiError> {
    auth.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let lang = LangQuery { lang: q.lang }.lang()?;
    let mut entries = s
        .crm
        .customers()
        .timeline(auth.tenant(), &id, limit)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("customer {id} not found")))?;
    entries.translate(&s.crm.tenant_packs(auth.tenant()), lang);
    Ok(Json(Timeline {
        customer_id: id,
        entries,
    }))
}

/// Marks a follow-up done: staff contacted the customer (agent).
#[utoipa::path(post, path = "/v1/customers/{id}/follow-ups/{follow_up}/done", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Customer id"), ("follow_up" = i64, Path, description = "Follow-up number")),
    responses((status = 200, description = "The customer after the change", body = CustomerView), Errors))]
async fn follow_up_done(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath((id, follow_up)): ApiPath<(String, i64)>,
) -> Result<Json<CustomerView>, ApiError> {
    auth.require(Role::Agent)?;
    if !s
        .crm
        .customers()
        .complete_follow_up(auth.tenant(), &id, follow_up)
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "open follow-up {follow_up} of customer {id} not found"
        )));
    }
    Ok(Json(
        s.crm.customers().customer_view(auth.tenant(), &id).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Snooze {
    /// Due again at this time (ms since the epoch or an RFC 3339 time), after now.
    #[serde(deserialize_with = "crate::domain::time::de_time")]
    #[schema(value_type = i64)]
    until: Option<i64>,
}

/// Snoozes a follow-up: it is due again at `until` (agent).
#[utoipa::path(post, path = "/v1/customers/{id}/follow-ups/{follow_up}/snooze", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Customer id"), ("follow_up" = i64, Path, description = "Follow-up number")),
    request_body = Snooze,
    responses((status = 200, description = "The customer after the change", body = CustomerView), Errors))]
async fn follow_up_snooze(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath((id, follow_up)): ApiPath<(String, i64)>,
    ApiJson(b): ApiJson<Snooze>,
) -> Result<Json<CustomerView>, ApiError> {
    auth.require(Role::Agent)?;
    let until = b
        .until
        .ok_or_else(|| ApiError::Unprocessable("until is required".into()))?;
    if !s
        .crm
        .customers()
        .snooze_follow_up(auth.tenant(), &id, follow_up, until)
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "open follow-up {follow_up} of customer {id} not found"
        )));
    }
    Ok(Json(
        s.crm.customers().customer_view(auth.tenant(), &id).await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WorkListQuery {
    /// Whose list: `me` (the agent the token is labelled for, the default), an
    /// agent's name, or `none` (customers nobody looks after).
    owner: Option<String>,
    /// Only follow-ups due before this time (ms or RFC 3339).
    #[serde(default, deserialize_with = "crate::domain::time::de_time")]
    due_before: Option<i64>,
    /// At most this many in all, soonest due first (default 200, at most 1,000).
    limit: Option<i64>,
}

/// An agent's work list: the open follow-ups of the customers they look after,
/// overdue, due today (UTC) and later, soonest first (agent).
#[utoipa::path(get, path = "/v1/follow-ups", tag = CUSTOMERS, security(("bearer" = [])), params(WorkListQuery),
    responses((status = 200, description = "The work list", body = WorkList), Errors))]
async fn work_list(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<WorkListQuery>,
) -> Result<Json<WorkList>, ApiError> {
    auth.require(Role::Agent)?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            "limit must be between 1 and 1000",
        ));
    }
    let owner = match q.owner.as_deref() {
        None | Some("me") => Some(auth.0.agent.clone()),
        Some("none") => None,
        Some(o) => Some(o.to_string()),
    };
    Ok(Json(
        s.crm
            .customers()
            .work_list(auth.tenant(), owner.as_deref(), q.due_before, limit)
            .await?,
    ))
}
