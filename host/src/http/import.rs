//! `/v1/import/{customers,events,cdnow}`: streamed bulk import.

use super::openapi::{Errors, CUSTOMERS};
use super::{ApiError, ApiPath, ApiQuery, AppState, Auth};
use crate::domain::Role;
use crate::services::ImportReport;
use axum::body::Body;
use axum::extract::State;
use axum::Json;
use futures::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::StreamReader;

pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(import))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ImportQuery {
    /// The time plugins are told (ms), for replaying history; defaults to now.
    now: Option<i64>,
}

/// Streams a CSV of customers or events, or CDNOW order lines, through the
/// pipeline; bad rows are reported by line and skipped (agent).
#[utoipa::path(post, path = "/v1/import/{what}", tag = CUSTOMERS, security(("bearer" = [])),
    params(("what" = String, Path, description = "`customers`, `events` or `cdnow`"), ImportQuery),
    request_body(content = String, content_type = "text/csv", description = "CSV with a header row (CDNOW: its whitespace-separated lines)"),
    responses((status = 200, description = "The report: rows read, imported, skipped, errors by line", body = ImportReport), Errors))]
async fn import(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(what): ApiPath<String>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: Body,
) -> Result<Json<ImportReport>, ApiError> {
    auth.require(Role::Agent)?;
    // The body is read as it arrives; nothing holds the whole file.
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let tenant = auth.tenant();
    let quiet = |_| {};
    let report = match what.as_str() {
        "customers" => {
            s.crm
                .imports()
                .import_customers(tenant, reader, &quiet)
                .await?
        }
        "events" => {
            s.crm
                .imports()
                .import_events(tenant, reader, q.now, &quiet)
                .await?
        }
        "cdnow" => {
            s.crm
                .imports()
                .import_cdnow(tenant, reader, q.now, &quiet)
                .await?
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "no importer {other:?}; use customers, events or cdnow"
            )))
        }
    };
    Ok(Json(report))
}
