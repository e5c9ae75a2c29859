//! `/v1/import/{customers,events,cdnow}`: streamed bulk import.

use super::{ApiError, ApiQuery, AppState, Auth};
use crate::model::Role;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::io::StreamReader;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/import/{what}", post(import))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// The time plugins are told (ms), for replaying history; defaults to now.
    now: Option<i64>,
}

async fn import(
    State(s): State<AppState>,
    auth: Auth,
    Path(what): Path<String>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Agent)?;
    // The body is read as it arrives; nothing holds the whole file.
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let tenant = auth.tenant();
    let quiet = |_| {};
    let report = match what.as_str() {
        "customers" => s.crm.import_customers(tenant, reader, &quiet).await?,
        "events" => s.crm.import_events(tenant, reader, q.now, &quiet).await?,
        "cdnow" => s.crm.import_cdnow(tenant, reader, q.now, &quiet).await?,
        other => {
            return Err(ApiError::NotFound(format!(
                "no importer {other:?}; use customers, events or cdnow"
            )))
        }
    };
    Ok(Json(json!(report)))
}
