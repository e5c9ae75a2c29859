//! `/v1/webhooks`: subscriptions to the change feed, delivered signed
//! (Standard Webhooks), their delivery log, redelivery and a test message.

use super::openapi::{Errors, CUSTOMERS};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, Auth};
use crate::domain::Role;
use crate::services::webhooks::{Delivery, Webhook, WebhookInput, WebhookPatch};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
        .routes(routes!(send_test))
}

fn missing(id: &str) -> ApiError {
    ApiError::NotFound(format!("webhook {id} not found"))
}

#[derive(Serialize, utoipa::ToSchema)]
struct WebhookList {
    webhooks: Vec<Webhook>,
}

/// The tenant's webhook subscriptions (integrator).
#[utoipa::path(get, path = "/v1/webhooks", tag = CUSTOMERS, security(("bearer" = [])),
    responses((status = 200, description = "The subscriptions", body = WebhookList), Errors))]
async fn list_webhooks(
    State(s): State<AppState>,
    auth: Auth,
) -> Result<Json<WebhookList>, ApiError> {
    auth.require(Role::Integrator)?;
    let webhooks = s.crm.webhooks().list(auth.tenant()).await?;
    Ok(Json(WebhookList { webhooks }))
}

/// Subscribes a URL to changes (all types, or `types`); the answer carries the
/// signing secret, shown this once (integrator). The URL must be https and not
/// an internal address (loopback, private, link-local, cloud metadata) unless
/// the operator allows it; deliveries are checked again on every connection.
#[utoipa::path(post, path = "/v1/webhooks", tag = CUSTOMERS, security(("bearer" = [])),
    request_body = WebhookInput,
    responses((status = 201, description = "The subscription and its secret", body = Webhook), Errors))]
async fn create_webhook(
    State(s): State<AppState>,
    auth: Auth,
    ApiJson(input): ApiJson<WebhookInput>,
) -> Result<(StatusCode, Json<Webhook>), ApiError> {
    auth.require(Role::Integrator)?;
    let w = s
        .crm
        .webhooks()
        .create(auth.tenant(), &auth.0.token_id, input)
        .await?;
    Ok((StatusCode::CREATED, Json(w)))
}

/// A subscription (integrator).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, description = "The subscription", body = Webhook), Errors))]
async fn get_webhook(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Webhook>, ApiError> {
    auth.require(Role::Integrator)?;
    s.crm
        .webhooks()
        .get(auth.tenant(), &id)
        .await?
        .map(Json)
        .ok_or_else(|| missing(&id))
}

/// Changes a subscription's url, types, description or enabled (integrator).
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    request_body = WebhookPatch,
    responses((status = 200, description = "The subscription", body = Webhook), Errors))]
async fn update_webhook(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<WebhookPatch>,
) -> Result<Json<Webhook>, ApiError> {
    auth.require(Role::Integrator)?;
    s.crm
        .webhooks()
        .update(auth.tenant(), &auth.0.token_id, &id, patch)
        .await?
        .map(Json)
        .ok_or_else(|| missing(&id))
}

/// Deletes a subscription and what it has queued (integrator).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_webhook(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Role::Integrator)?;
    if s.crm
        .webhooks()
        .delete(auth.tenant(), &auth.0.token_id, &id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing(&id))
    }
}

/// A new signing secret, shown this once; the old one also signs for 24 hours
/// (integrator).
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, description = "The subscription and its new secret", body = Webhook), Errors))]
async fn rotate_secret(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Webhook>, ApiError> {
    auth.require(Role::Integrator)?;
    s.crm
        .webhooks()
        .rotate_secret(auth.tenant(), &auth.0.token_id, &id)
        .await?
        .map(Json)
        .ok_or_else(|| missing(&id))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    /// At most this many, newest first (default 50, at most 200).
    limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeliveryLog {
    deliveries: Vec<Delivery>,
}

/// The subscription's latest deliveries with every attempt: status, latency,
/// the response's first bytes (integrator).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), DeliveriesQuery),
    responses((status = 200, description = "The delivery log", body = DeliveryLog), Errors))]
async fn list_deliveries(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryLog>, ApiError> {
    auth.require(Role::Integrator)?;
    let deliveries = s
        .crm
        .webhooks()
        .deliveries(auth.tenant(), &id, q.limit.unwrap_or(50))
        .await?
        .ok_or_else(|| missing(&id))?;
    Ok(Json(DeliveryLog { deliveries }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Queued {
    /// The `webhook-id` it is (or was) sent with.
    message_id: Option<String>,
    queued: bool,
}

/// Sends a delivered or dead message again, with the same `webhook-id` (integrator).
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery}/redeliver", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), ("delivery" = i64, Path, description = "Delivery id")),
    responses((status = 202, description = "Queued again", body = Queued), Errors))]
async fn redeliver(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath((id, delivery)): ApiPath<(String, i64)>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    auth.require(Role::Integrator)?;
    if s.crm
        .webhooks()
        .redeliver(auth.tenant(), &id, delivery)
        .await?
    {
        Ok((
            StatusCode::ACCEPTED,
            Json(Queued {
                message_id: None,
                queued: true,
            }),
        ))
    } else {
        Err(ApiError::NotFound(format!(
            "no delivered or dead delivery {delivery} of webhook {id}"
        )))
    }
}

/// Queues a `webhook.test` message to the subscription (integrator).
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = CUSTOMERS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 202, description = "Queued", body = Queued), Errors))]
async fn send_test(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    auth.require(Role::Integrator)?;
    let message = s
        .crm
        .webhooks()
        .send_test(auth.tenant(), &id)
        .await?
        .ok_or_else(|| missing(&id))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            message_id: Some(message),
            queued: true,
        }),
    ))
}
