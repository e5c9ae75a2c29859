//! The one place where errors become HTTP statuses and JSON bodies:
//! `{"error": {"code": "snake_case_code", "message": "human sentence"}}`.
//! Details of server-side failures are logged, never returned.

use crate::pipeline::PipelineError;
use crate::services::import::ImportError;
use crate::services::registry::RegistryError;
use crate::services::CrmError;
use crate::services::StoreError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The body of every error response (and its OpenAPI schema): what
/// [`ApiError::into_response`] writes, and [`super::wire`] for what hyper refuses.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code, e.g. `not_found`, `invalid_body`, `validation_failed`.
    pub code: String,
    /// A sentence naming the problem.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Every plugin instance slot was in use: try again in a moment.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Busy(_) => "busy",
            ApiError::TooLarge(_) => "body_too_large",
            ApiError::Unprocessable(_) => "validation_failed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                "internal error; the server log has the details".to_string()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!("unavailable: {detail}");
                "the database is unavailable; try again shortly".to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message,
            },
        };
        let mut resp = (self.status_code(), axum::Json(body)).into_response();
        if let ApiError::Busy(_) = self {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(format!("{m} not found")),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Store(s) => s.into(),
            PipelineError::UnknownCustomer(id) => {
                ApiError::NotFound(format!("customer {id} not found"))
            }
            PipelineError::Invalid(m) => ApiError::Unprocessable(m),
            e @ PipelineError::KeyReused(..) => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<CrmError> for ApiError {
    fn from(e: CrmError) -> Self {
        match e {
            CrmError::Pipeline(p) => p.into(),
            CrmError::Store(s) => s.into(),
            CrmError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Store(s) => s.into(),
            e @ (ImportError::Header(_) | ImportError::Invalid(_)) => {
                ApiError::Unprocessable(e.to_string())
            }
            e @ ImportError::Read(_) => ApiError::bad_request("bad_body", e.to_string()),
            e @ ImportError::Internal(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("bad_json", e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_body", e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
                "bad_content_type",
                "the body must be JSON with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::TooLarge(format!(
                    "the body is larger than {} bytes",
                    super::JSON_LIMIT
                ))
            }
            other => ApiError::bad_request("bad_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("bad_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("bad_path", r.body_text())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(s) => s.into(),
            RegistryError::NotFound(m) => ApiError::NotFound(m),
            RegistryError::Rejected(e @ crate::runtime::RuntimeError::Busy(_)) => {
                ApiError::Busy(e.to_string())
            }
            e @ RegistryError::Rejected(_) => ApiError::Unprocessable(e.to_string()),
            e @ RegistryError::BadRules(_) => ApiError::Unprocessable(e.to_string()),
            RegistryError::Conflict(m) => ApiError::Conflict(m),
            RegistryError::Invalid(m) => ApiError::Unprocessable(m),
            e @ RegistryError::TooLarge(_) => ApiError::TooLarge(e.to_string()),
            e @ RegistryError::Reload(_) => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;

    fn answered(e: impl Into<ApiError>) -> Response {
        e.into().into_response()
    }

    /// Every instance slot in use is "try again shortly" (429 with Retry-After),
    /// not a refusal of the component or rules.
    #[test]
    fn a_busy_runtime_is_429_with_retry_after() {
        let r = answered(RegistryError::Rejected(RuntimeError::Busy(16)));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "1");
        let r = answered(RegistryError::Rejected(RuntimeError::NotWasm));
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    /// Faults of the host are 500s with the details in the log, not a 422 with
    /// internal text (a failed reload) or "stored data is corrupt" (a task panic
    /// in the importer).
    #[test]
    fn host_faults_are_500() {
        let reload = RegistryError::Reload(crate::packs::PacksError::Store(
            StoreError::Unavailable("gone".into()),
        ));
        assert_eq!(answered(reload).status(), StatusCode::INTERNAL_SERVER_ERROR);
        let import = ImportError::Internal("task panicked".into());
        assert_eq!(answered(import).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
