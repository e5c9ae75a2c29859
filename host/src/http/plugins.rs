//! `/v1/plugins`: the registry (upload, versions, rule sets), activation,
//! rollback, dry-run; `/v1/rescore` and `/v1/jobs/{id}`.

use super::openapi::{Errors, PLUGINS};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, Auth};
use crate::domain::Manifest;
use crate::domain::Role;
use crate::packs::VersionHealth;
use crate::services::registry::{
    Candidate, DryRunOutcome, DryRunReport, PluginRecord, Uploaded, MAX_COMPONENT_BYTES,
};
use crate::services::{Activation, Job, Pair, RuleSet};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    // Components are larger than the JSON limit; `read_component` bounds them.
    let (schemas, paths, upload_route) = routes!(upload);
    let upload_route = upload_route.layer(DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes((schemas, paths, upload_route))
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(put_rules))
        .routes(routes!(activate))
        .routes(routes!(rollback))
        .routes(routes!(dry_run))
        .routes(routes!(grant_fields))
        .routes(routes!(rescore))
        .routes(routes!(job))
}

/// Uploads a plugin component; it is checked (world, imports, manifest) and stored,
/// not enabled (integrator). Uploading the same bytes again is not an error.
#[utoipa::path(post, path = "/v1/plugins", tag = PLUGINS, security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A wasm component of the stagecraft:plugin world (any content type is accepted)"),
    responses((status = 201, description = "Stored: name, version, digest, manifest", body = Uploaded),
              (status = 200, description = "These bytes were already stored", body = Uploaded), Errors))]
async fn upload(
    State(s): State<AppState>,
    auth: Result<Auth, ApiError>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    // The token and role are checked before the body is kept: a refused upload's
    // body is read and dropped (answering while the client is still sending
    // would close the connection under it), never buffered.
    let auth = match auth.and_then(|a| a.require(Role::Integrator).map(|()| a)) {
        Ok(a) => a,
        Err(e) => {
            super::discard(body, MAX_COMPONENT_BYTES).await;
            return Err(e);
        }
    };
    let body = read_component(body).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "bad_body",
            "the body must be a wasm component",
        ));
    }
    let up = s
        .crm
        .registry()
        .upload_plugin(auth.tenant(), &auth.0.token_id, body.to_vec())
        .await?;
    let status = if up.stored {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(up)))
}

/// The uploaded bytes, at most [`MAX_COMPONENT_BYTES`] (see [`super::read_bounded`]).
async fn read_component(body: axum::body::Body) -> Result<Vec<u8>, ApiError> {
    super::read_bounded(body, MAX_COMPONENT_BYTES)
        .await?
        .ok_or_else(|| {
            ApiError::TooLarge(format!(
                "a component may be at most {MAX_COMPONENT_BYTES} bytes"
            ))
        })
}

/// A stored version of a plugin, its status for the tenant and this host's
/// count of its health.
#[derive(Serialize, utoipa::ToSchema)]
struct VersionView {
    version: String,
    digest: String,
    size: i64,
    created_at: i64,
    /// `active`, `suspended` or `available`.
    status: &'static str,
    /// Why the circuit breaker suspended it, if it did.
    suspended_because: Option<String>,
    health: VersionHealth,
    description: String,
    capabilities: Capabilities,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Capabilities {
    scoring: bool,
    segmentation: bool,
    lifecycle: bool,
}

/// Everything the registry knows about one plugin of the tenant. The list of
/// plugins leaves out rule sets, activations and manifest (it stays short).
#[derive(Serialize, utoipa::ToSchema)]
struct PluginView {
    name: String,
    /// The active pair, if the plugin is enabled.
    active: Option<Pair>,
    owns_lifecycle: bool,
    /// Oldest first.
    versions: Vec<VersionView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_sets: Option<Vec<RuleSet>>,
    /// Every activate and rollback, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    activations: Option<Vec<Activation>>,
    granted_fields: Vec<String>,
    /// The manifest of the active version (else the newest).
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<Manifest>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct PluginList {
    plugins: Vec<PluginView>,
}

async fn describe(s: &AppState, tenant: &str, name: &str) -> Result<Option<PluginView>, ApiError> {
    let Some(PluginRecord {
        versions,
        health,
        active,
        suspended,
        rule_sets,
        activations,
        granted_fields,
    }) = s.crm.registry().plugin(tenant, name).await?
    else {
        return Ok(None);
    };
    let list: Vec<VersionView> = versions
        .iter()
        .zip(health)
        .map(|(v, health)| {
            let suspended_because = suspended
                .iter()
                .find(|x| x.0 == v.version)
                .map(|x| x.1.clone());
            let status = match (&active, &suspended_because) {
                (Some((p, _)), _) if p.version == v.version => "active",
                (_, Some(_)) => "suspended",
                _ => "available",
            };
            VersionView {
                version: v.version.clone(),
                digest: v.digest.clone(),
                size: v.size,
                created_at: v.created_at,
                status,
                suspended_because,
                health,
                description: v.manifest.description.clone(),
                capabilities: Capabilities {
                    scoring: v.manifest.scoring,
                    segmentation: v.manifest.segmentation,
                    lifecycle: v.manifest.lifecycle,
                },
            }
        })
        .collect();
    let latest = versions.last().expect("not empty");
    let current = active
        .as_ref()
        .and_then(|(p, _)| versions.iter().find(|v| v.version == p.version))
        .unwrap_or(latest);
    Ok(Some(PluginView {
        name: name.to_string(),
        owns_lifecycle: active.as_ref().is_some_and(|(_, o)| *o),
        active: active.map(|(p, _)| p),
        versions: list,
        rule_sets: Some(rule_sets),
        activations: Some(activations),
        granted_fields,
        manifest: Some(current.manifest.clone()),
    }))
}

/// The tenant's plugins with their versions, status and health (viewer).
#[utoipa::path(get, path = "/v1/plugins", tag = PLUGINS, security(("bearer" = [])),
    responses((status = 200, description = "The plugins, by name", body = PluginList), Errors))]
async fn list(State(s): State<AppState>, auth: Auth) -> Result<Json<PluginList>, ApiError> {
    auth.require(Role::Viewer)?;
    let names = s.crm.registry().plugin_names(auth.tenant()).await?;
    let mut out = Vec::new();
    for n in names {
        if let Some(mut d) = describe(&s, auth.tenant(), &n).await? {
            // The list stays short: no rule-set bodies or history.
            d.rule_sets = None;
            d.activations = None;
            d.manifest = None;
            out.push(d);
        }
    }
    Ok(Json(PluginList { plugins: out }))
}

/// One plugin: versions with status and health, rule sets, activation history, grants, manifest (viewer).
#[utoipa::path(get, path = "/v1/plugins/{name}", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "The plugin", body = PluginView), Errors))]
async fn show(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PluginView>, ApiError> {
    auth.require(Role::Viewer)?;
    describe(&s, auth.tenant(), &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("plugin {name} not found")))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RulesQuery {
    /// The plugin version to check the rules with (default: the active one).
    version: Option<String>,
}

/// A stored rule set.
#[derive(Serialize, utoipa::ToSchema)]
struct RulesStored {
    plugin: String,
    rules_version: i64,
    /// The plugin version whose schema and `configure` accepted it.
    checked_with: String,
}

/// Stores a new rule-set version, validated against the plugin's schema (integrator).
#[utoipa::path(put, path = "/v1/plugins/{name}/rules", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name"), RulesQuery),
    request_body(content = Object, description = "The rule set; the plugin's manifest gives its JSON schema"),
    responses((status = 201, description = "The rule set's new version", body = RulesStored), Errors))]
async fn put_rules(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<RulesQuery>,
    ApiJson(rules): ApiJson<Value>,
) -> Result<(StatusCode, Json<RulesStored>), ApiError> {
    auth.require(Role::Integrator)?;
    let (n, checked_with) = s
        .crm
        .registry()
        .put_rules(
            auth.tenant(),
            &auth.0.token_id,
            &name,
            q.version.as_deref(),
            &rules,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RulesStored {
            plugin: name,
            rules_version: n,
            checked_with,
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    version: String,
    /// A stored rule-set version; `null` or absent: the plugin's default rules.
    #[serde(default)]
    rules_version: Option<i64>,
    /// Give this plugin the tenant's lifecycle (default: keep as it is).
    #[serde(default)]
    owns_lifecycle: Option<bool>,
    /// Why, for the activation history and the audit trail (up to 500 bytes).
    #[serde(default)]
    reason: Option<String>,
}

/// What an activation or a rollback switched.
#[derive(Serialize, utoipa::ToSchema)]
struct Switched {
    plugin: String,
    /// The pair active before, if any.
    from: Option<Pair>,
    /// The pair active now; null when a rollback disabled the plugin.
    to: Option<Pair>,
}

/// Makes a version and rule set the active pair, on every host within a second (admin).
#[utoipa::path(post, path = "/v1/plugins/{name}/activate", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    request_body = ActivateBody,
    responses((status = 200, description = "The pair before and after", body = Switched), Errors))]
async fn activate(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<ActivateBody>,
) -> Result<Json<Switched>, ApiError> {
    auth.require(Role::Admin)?;
    let pair = Pair {
        version: b.version,
        rules_version: b.rules_version,
    };
    let (from, to) = s
        .crm
        .registry()
        .activate(
            auth.tenant(),
            &auth.0.token_id,
            &name,
            pair,
            b.owns_lifecycle,
            b.reason.as_deref(),
        )
        .await?;
    Ok(Json(Switched {
        plugin: name,
        from,
        to: Some(to),
    }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// Why, for the audit trail.
    #[serde(default)]
    reason: Option<String>,
}

/// Restores the previously active pair (admin).
#[utoipa::path(post, path = "/v1/plugins/{name}/rollback", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    request_body(content = Option<RollbackBody>, description = "Optional"),
    responses((status = 200, description = "The pair before and after", body = Switched), Errors))]
async fn rollback(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> Result<Json<Switched>, ApiError> {
    auth.require(Role::Admin)?;
    // The body is optional: `{"reason": "..."}` or nothing.
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
    };
    let reason = body.reason.unwrap_or_else(|| "rollback".into());
    let (from, to) = s
        .crm
        .registry()
        .rollback(auth.tenant(), &auth.0.token_id, &name, &reason)
        .await?;
    Ok(Json(Switched {
        plugin: name,
        from: Some(from),
        to,
    }))
}

/// Compares a candidate pair with the active one on stored customers, changing nothing (integrator).
#[utoipa::path(post, path = "/v1/plugins/{name}/dry-run", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    request_body = Candidate,
    responses((status = 200, description = "The diff: counts and the customers that change, with reasons", body = DryRunReport),
              (status = 202, description = "Large: runs as a job", body = JobStarted), Errors))]
async fn dry_run(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(c): ApiJson<Candidate>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    auth.require(Role::Integrator)?;
    Ok(
        match s.crm.registry().dry_run(auth.tenant(), &name, c).await? {
            DryRunOutcome::Done(r) => (StatusCode::OK, Json(r)).into_response(),
            DryRunOutcome::Job(id) => {
                (StatusCode::ACCEPTED, Json(JobStarted::new(id))).into_response()
            }
        },
    )
}

/// A job started: its id and where to follow it.
#[derive(Serialize, utoipa::ToSchema)]
struct JobStarted {
    job: String,
    /// `/v1/jobs/{job}`.
    status: String,
}

impl JobStarted {
    fn new(job: String) -> JobStarted {
        let status = format!("/v1/jobs/{job}");
        JobStarted { job, status }
    }
}

/// As of when a rescore evaluates.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RescoreQuery {
    /// The `now` plugins are told: ms since the epoch or an RFC 3339 time
    /// (a history scored as of its own end); the clock's now if absent.
    #[serde(default, deserialize_with = "crate::domain::time::de_time")]
    now: Option<i64>,
}

/// Rescores every customer of the tenant with the active pairs, as a job (integrator).
#[utoipa::path(post, path = "/v1/rescore", tag = PLUGINS, security(("bearer" = [])),
    params(RescoreQuery),
    responses((status = 202, description = "The job", body = JobStarted), Errors))]
async fn rescore(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<RescoreQuery>,
) -> Result<(StatusCode, Json<JobStarted>), ApiError> {
    auth.require(Role::Integrator)?;
    let job = s
        .crm
        .jobs()
        .start_rescore(auth.tenant(), &auth.0.token_id, q.now)
        .await?;
    let (crm, tenant, id) = (s.crm.clone(), auth.tenant().to_string(), job.clone());
    // The job's log lines keep the request id of the request that started it.
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        if let Err(e) = crm
            .jobs()
            .work_on_rescore(&tenant, &id, &crate::services::jobs::host_id())
            .await
        {
            tracing::error!("rescore job {id}: {e}");
        }
    }));
    Ok((StatusCode::ACCEPTED, Json(JobStarted::new(job))))
}

/// A dry-run or rescore job: progress and, when done, the result (viewer).
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = PLUGINS, security(("bearer" = [])), params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job", body = Job), Errors))]
async fn job(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    auth.require(Role::Viewer)?;
    s.crm
        .jobs()
        .job(auth.tenant(), &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    /// Sensitive fields the plugin may see; replaces the previous grant.
    fields: Vec<String>,
}

/// The sensitive fields a plugin may now see.
#[derive(Serialize, utoipa::ToSchema)]
struct Granted {
    plugin: String,
    granted_fields: Vec<String>,
}

/// Lets a plugin see sensitive fields it asks for (admin).
#[utoipa::path(put, path = "/v1/plugins/{name}/grants", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    request_body = GrantBody,
    responses((status = 200, description = "The grant", body = Granted), Errors))]
async fn grant_fields(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<GrantBody>,
) -> Result<Json<Granted>, ApiError> {
    auth.require(Role::Admin)?;
    s.crm
        .registry()
        .grant_fields(auth.tenant(), &auth.0.token_id, &name, b.fields.clone())
        .await?;
    Ok(Json(Granted {
        plugin: name,
        granted_fields: b.fields,
    }))
}
