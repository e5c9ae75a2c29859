//! `/v1/plugins`: the registry (upload, versions, rule sets), activation,
//! rollback, dry-run; `/v1/rescore` and `/v1/jobs/{id}`.

use super::{ApiError, ApiJson, ApiQuery, AppState, Auth};
use crate::model::Role;
use crate::registry::{Candidate, DryRunOutcome, MAX_COMPONENT_BYTES};
use crate::store::{self, Pair};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/plugins",
            post(upload)
                .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES))
                .get(list),
        )
        .route("/v1/plugins/{name}", get(show))
        .route("/v1/plugins/{name}/rules", put(put_rules))
        .route("/v1/plugins/{name}/activate", post(activate))
        .route("/v1/plugins/{name}/rollback", post(rollback))
        .route("/v1/plugins/{name}/dry-run", post(dry_run))
        .route("/v1/plugins/{name}/grants", put(grant_fields))
        .route("/v1/rescore", post(rescore))
        .route("/v1/jobs/{id}", get(job))
}

async fn upload(
    State(s): State<AppState>,
    auth: Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Integrator)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "a component may be at most {MAX_COMPONENT_BYTES} bytes"
            ))
        } else {
            ApiError::bad_request("bad_body", e.body_text())
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "bad_body",
            "the body must be a wasm component",
        ));
    }
    let up = s
        .crm
        .upload_plugin(auth.tenant(), &auth.0.token_id, body.to_vec())
        .await?;
    let status = if up.stored {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(up))))
}

/// Everything the registry knows about one plugin of the tenant.
async fn describe(s: &AppState, tenant: &str, name: &str) -> Result<Option<Value>, ApiError> {
    let mut conn = s.crm.store.conn().await?;
    let versions = store::plugin_versions(&mut conn, tenant, Some(name)).await?;
    if versions.is_empty() {
        return Ok(None);
    }
    let active = store::active_pair(&mut conn, tenant, name).await?;
    let suspended = store::suspensions(&mut conn, tenant, name).await?;
    let rule_sets = store::rule_sets(&mut conn, tenant, name).await?;
    let history = store::activations(&mut conn, tenant, name).await?;
    let grants = store::field_grants(&mut conn, tenant, name).await?;
    let list: Vec<Value> = versions
        .iter()
        .map(|v| {
            let status = match (&active, suspended.iter().find(|x| x.0 == v.version)) {
                (Some((p, _)), _) if p.version == v.version => "active",
                (_, Some(_)) => "suspended",
                _ => "available",
            };
            json!({
                "version": v.version, "digest": v.digest, "size": v.size, "created_at": v.created_at,
                "status": status,
                "suspended_because": suspended.iter().find(|x| x.0 == v.version).map(|x| &x.1),
                "health": s.crm.packs.health(tenant, name, &v.version),
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

async fn list(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let mut conn = s.crm.store.conn().await?;
    let mut names: Vec<String> = store::plugin_versions(&mut conn, auth.tenant(), None)
        .await?
        .into_iter()
        .map(|v| v.name)
        .collect();
    drop(conn);
    names.dedup();
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

async fn show(
    State(s): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    describe(&s, auth.tenant(), &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("plugin {name} not found")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesQuery {
    /// The plugin version to check the rules with (default: the active one).
    version: Option<String>,
}

async fn put_rules(
    State(s): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<RulesQuery>,
    ApiJson(rules): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Integrator)?;
    let (n, checked_with) = s
        .crm
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    version: String,
    /// A stored rule-set version; `null` or absent: the plugin's default rules.
    #[serde(default)]
    rules_version: Option<i64>,
    /// Give this plugin the tenant's lifecycle (default: keep as it is).
    #[serde(default)]
    owns_lifecycle: Option<bool>,
}

async fn activate(
    State(s): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<ActivateBody>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Admin)?;
    let pair = Pair {
        version: b.version,
        rules_version: b.rules_version,
    };
    let (from, to) = s
        .crm
        .activate(
            auth.tenant(),
            &auth.0.token_id,
            &name,
            pair,
            b.owns_lifecycle,
        )
        .await?;
    Ok(Json(json!({ "plugin": name, "from": from, "to": to })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn rollback(
    State(s): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
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
        .rollback(auth.tenant(), &auth.0.token_id, &name, &reason)
        .await?;
    Ok(Json(json!({ "plugin": name, "from": from, "to": to })))
}

async fn dry_run(
    State(s): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    ApiJson(c): ApiJson<Candidate>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Integrator)?;
    match s.crm.dry_run(auth.tenant(), &name, c).await? {
        DryRunOutcome::Done(r) => Ok((StatusCode::OK, Json(json!(r)))),
        DryRunOutcome::Job(id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "job": id, "status": format!("/v1/jobs/{id}") })),
        )),
    }
}

async fn rescore(
    State(s): State<AppState>,
    auth: Auth,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Integrator)?;
    let job = s.crm.start_rescore(auth.tenant(), &auth.0.token_id).await?;
    let (crm, tenant, id) = (s.crm.clone(), auth.tenant().to_string(), job.clone());
    tokio::spawn(async move {
        if let Err(e) = crm
            .work_on_rescore(&tenant, &id, &crate::registry::host_id())
            .await
        {
            tracing::error!("rescore job {id}: {e}");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job": job, "status": format!("/v1/jobs/{job}") })),
    ))
}

async fn job(
    State(s): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let mut conn = s.crm.store.conn().await?;
    store::job(&mut conn, auth.tenant(), &id)
        .await?
        .map(|j| Json(json!(j)))
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    fields: Vec<String>,
}

/// Lets a plugin see sensitive fields it asks for (admin).
async fn grant_fields(
    State(s): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<GrantBody>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Admin)?;
    s.crm
        .grant_fields(auth.tenant(), &auth.0.token_id, &name, b.fields.clone())
        .await?;
    Ok(Json(json!({ "plugin": name, "granted_fields": b.fields })))
}
