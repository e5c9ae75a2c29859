//! `/v1/plugins`: the registry (upload, versions, rule sets), activation,
//! rollback, dry-run; `/v1/rescore` and `/v1/jobs/{id}`.

use super::openapi::{Errors, PLUGINS};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, Auth};
use crate::domain::Role;
use crate::services::registry::PluginRecord;
use crate::services::registry::{Candidate, DryRunOutcome, MAX_COMPONENT_BYTES};
use crate::services::Pair;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
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
    responses((status = 201, description = "Stored: name, version, digest, manifest", body = Object),
              (status = 200, description = "These bytes were already stored", body = Object), Errors))]
async fn upload(
    State(s): State<AppState>,
    auth: Result<Auth, ApiError>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    Ok((status, Json(json!(up))))
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

/// Everything the registry knows about one plugin of the tenant.
async fn describe(s: &AppState, tenant: &str, name: &str) -> Result<Option<Value>, ApiError> {
    let Some(PluginRecord {
        versions,
        health,
        active,
        suspended,
        rule_sets,
        activations: history,
        granted_fields: grants,
    }) = s.crm.registry().plugin(tenant, name).await?
    else {
        return Ok(None);
    };
    let list: Vec<Value> = versions
        .iter()
        .zip(health)
        .map(|(v, health)| {
            let status = match (&active, suspended.iter().find(|x| x.0 == v.version)) {
                (Some((p, _)), _) if p.version == v.version => "active",
                (_, Some(_)) => "suspended",
                _ => "available",
            };
            json!({
                "version": v.version, "digest": v.digest, "size": v.size, "created_at": v.created_at,
                "status": status,
                "suspended_because": suspended.iter().find(|x| x.0 == v.version).map(|x| &x.1),
                "health": health,
                "description": v.manifest.description,
                "capabilities": { "scoring": v.manifest.scoring, "segmentation": v.manifest.segmentation, "lifecycle": v.manifest.lifecycle },
            })
        })
        .collect();
    let latest = versions.last().expect("not empty");
    let current = active
        .as_ref()
        .and_then(|(p, _)| versions.iter().find(|v| v.version == p.version))
        .unwrap_or(latest);
    Ok(Some(json!({
        "name": name,
        "active": active.as_ref().map(|(p, _)| p),
        "owns_lifecycle": active.as_ref().is_some_and(|(_, o)| *o),
        "versions": list,
        "rule_sets": rule_sets,
        "activations": history,
        "granted_fields": grants,
        "manifest": current.manifest,
    })))
}

/// The tenant's plugins with their versions, status and health (viewer).
#[utoipa::path(get, path = "/v1/plugins", tag = PLUGINS, security(("bearer" = [])),
    responses((status = 200, description = "`{plugins: [...]}`", body = Object), Errors))]
async fn list(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let names = s.crm.registry().plugin_names(auth.tenant()).await?;
    let mut out = Vec::new();
    for n in names {
        if let Some(mut d) = describe(&s, auth.tenant(), &n).await? {
            // The list stays short: no rule-set bodies or history.
            if let Some(o) = d.as_object_mut() {
                o.remove("rule_sets");
                o.remove("activations");
                o.remove("manifest");
            }
            out.push(d);
        }
    }
    Ok(Json(json!({ "plugins": out })))
}

/// One plugin: versions with status and health, rule sets, activation history, grants, manifest (viewer).
#[utoipa::path(get, path = "/v1/plugins/{name}", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, description = "The plugin", body = Object), Errors))]
async fn show(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
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

/// Stores a new rule-set version, validated against the plugin's schema (integrator).
#[utoipa::path(put, path = "/v1/plugins/{name}/rules", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name"), RulesQuery),
    request_body(content = Object, description = "The rule set; the plugin's manifest gives its JSON schema"),
    responses((status = 201, description = "`{plugin, rules_version, checked_with}`", body = Object), Errors))]
async fn put_rules(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<RulesQuery>,
    ApiJson(rules): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        Json(json!({ "plugin": name, "rules_version": n, "checked_with": checked_with })),
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

/// Makes a version and rule set the active pair, on every host within a second (admin).
#[utoipa::path(post, path = "/v1/plugins/{name}/activate", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    request_body = ActivateBody,
    responses((status = 200, description = "`{plugin, from, to}`", body = Object), Errors))]
async fn activate(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<ActivateBody>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "plugin": name, "from": from, "to": to })))
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
    responses((status = 200, description = "`{plugin, from, to}`", body = Object), Errors))]
async fn rollback(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "plugin": name, "from": from, "to": to })))
}

/// Compares a candidate pair with the active one on stored customers, changing nothing (integrator).
#[utoipa::path(post, path = "/v1/plugins/{name}/dry-run", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    request_body = Candidate,
    responses((status = 200, description = "The diff: counts and the customers that change, with reasons", body = Object),
              (status = 202, description = "Large: runs as a job; `{job, status}`", body = Object), Errors))]
async fn dry_run(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(c): ApiJson<Candidate>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Integrator)?;
    match s.crm.registry().dry_run(auth.tenant(), &name, c).await? {
        DryRunOutcome::Done(r) => Ok((StatusCode::OK, Json(json!(r)))),
        DryRunOutcome::Job(id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "job": id, "status": format!("/v1/jobs/{id}") })),
        )),
    }
}

/// Rescores every customer of the tenant with the active pairs, as a job (integrator).
#[utoipa::path(post, path = "/v1/rescore", tag = PLUGINS, security(("bearer" = [])),
    responses((status = 202, description = "`{job, status}`", body = Object), Errors))]
async fn rescore(
    State(s): State<AppState>,
    auth: Auth,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Integrator)?;
    let job = s
        .crm
        .jobs()
        .start_rescore(auth.tenant(), &auth.0.token_id)
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
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job": job, "status": format!("/v1/jobs/{job}") })),
    ))
}

/// A dry-run or rescore job: progress and, when done, the result (viewer).
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = PLUGINS, security(("bearer" = [])), params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job", body = Object), Errors))]
async fn job(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    s.crm
        .jobs()
        .job(auth.tenant(), &id)
        .await?
        .map(|j| Json(json!(j)))
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    /// Sensitive fields the plugin may see; replaces the previous grant.
    fields: Vec<String>,
}

/// Lets a plugin see sensitive fields it asks for (admin).
#[utoipa::path(put, path = "/v1/plugins/{name}/grants", tag = PLUGINS, security(("bearer" = [])), params(("name" = String, Path, description = "Plugin name")),
    request_body = GrantBody,
    responses((status = 200, description = "`{plugin, granted_fields}`", body = Object), Errors))]
async fn grant_fields(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<GrantBody>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Admin)?;
    s.crm
        .registry()
        .grant_fields(auth.tenant(), &auth.0.token_id, &name, b.fields.clone())
        .await?;
    Ok(Json(json!({ "plugin": name, "granted_fields": b.fields })))
}
