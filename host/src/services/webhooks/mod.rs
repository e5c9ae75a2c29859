//! Webhooks: subscriptions per tenant to the change feed, delivered signed
//! (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`
//! `v1,` HMAC-SHA256) by a dispatcher every host runs.
//!
//! The dispatcher's round ([`Webhooks::work`]): give committed changes their
//! place in the feed; turn each subscription's new changes into deliveries
//! (the subscription's row taken by one host at a time, its cursor moved in
//! the same transaction); claim due deliveries with a lease (PostgreSQL:
//! `SKIP LOCKED`), only the earliest pending of each subscription and customer
//! so a customer's changes arrive in order; send them at once (a timeout per
//! attempt, no redirects, only to addresses [`egress::Egress`] allows); write
//! each result if the claim still holds it. A failure is retried with
//! exponential backoff and jitter until the horizon, then the delivery is dead;
//! a subscription failing for the whole horizon is disabled, with an audit
//! entry. At least once: a host killed mid-delivery leaves the delivery to be
//! claimed again when its lease runs out, and it is sent with the same
//! `webhook-id`.

pub mod egress;

use super::{invalid, CrmError};
use crate::domain::changes::ChangeType;
use crate::domain::time::Clock;
use crate::metrics::Metrics;
use crate::store::{self, Store, WebhookRow};
use base64::Engine;
use egress::Egress;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How deliveries are tried.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Per attempt (10 s).
    pub timeout: Duration,
    /// The first retry's delay; each next one doubles, up to `max_delay`, with
    /// ±20 % jitter.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// How long a delivery is retried before it is dead, and how long a
    /// subscription may fail before it is disabled (3 days).
    pub horizon: Duration,
    /// A claim's lease without its heartbeat.
    pub lease: Duration,
    /// How long a rotated-out secret still signs (24 h).
    pub overlap: Duration,
    /// Deliveries claimed at once.
    pub chunk: i64,
    /// How often an idle dispatcher looks for work.
    pub poll: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            timeout: Duration::from_secs(10),
            first_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(3600),
            horizon: Duration::from_secs(3 * 24 * 3600),
            lease: Duration::from_secs(60),
            overlap: Duration::from_secs(24 * 3600),
            chunk: 256,
            poll: Duration::from_millis(200),
        }
    }
}

/// Subscriptions per tenant at most.
const MAX_WEBHOOKS: i64 = 20;
/// Bytes of a response kept for the log (and read at most: 64 KiB).
const RESPONSE_READ: usize = 64 * 1024;
const RESPONSE_KEPT: usize = 1024;

/// A subscription as a client sends it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Where to POST (https, unless the operator allows http).
    pub url: String,
    /// Change types to send (see `GET /v1/changes`); every type when empty.
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A change to a subscription; what is absent stays.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub types: Option<Vec<String>>,
    pub description: Option<String>,
    /// Enabling again clears what disabled it.
    pub enabled: Option<bool>,
}

/// A subscription as the API shows it (its secret only when made or rotated).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub types: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    /// Why it was disabled by the host (failing for the whole horizon).
    pub disabled_reason: Option<String>,
    /// Since when every delivery has failed, if they do.
    pub failing_since: Option<i64>,
    /// Until when the secret before the last rotation still signs too.
    pub previous_secret_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The signing secret (`whsec_` and base64, for a Standard Webhooks
    /// library): only in the answers that make it (create, rotate-secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One delivery in the log, with its attempts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    /// The `webhook-id` it is sent with (the change's id).
    pub message_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: i64,
    pub next_at: i64,
    pub created_at: i64,
    pub done_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub attempt_log: Vec<DeliveryAttempt>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    pub at: i64,
    /// The HTTP status, if there was a response.
    pub status: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
    /// The response's first bytes.
    pub response: Option<String>,
    pub host: String,
}

/// The webhook subscriptions of every tenant, and the dispatcher.
#[derive(Clone, Debug)]
pub struct Webhooks {
    store: Store,
    clock: Clock,
    metrics: Arc<Metrics>,
    egress: Arc<Egress>,
    policy: DeliveryPolicy,
    client: reqwest::Client,
}

impl Webhooks {
    pub(crate) fn new(store: Store, clock: Clock, metrics: Arc<Metrics>) -> Webhooks {
        let egress = Arc::new(Egress::default());
        let policy = DeliveryPolicy::default();
        Webhooks {
            client: egress.client(policy.timeout),
            store,
            clock,
            metrics,
            egress,
            policy,
        }
    }

    pub(crate) fn configure(&mut self, egress: Egress, policy: DeliveryPolicy) {
        self.egress = Arc::new(egress);
        self.client = self.egress.client(policy.timeout);
        self.policy = policy;
    }

    /// Creates a subscription; it hears of changes made from now on.
    pub async fn create(
        &self,
        tenant: &str,
        actor: &str,
        input: WebhookInput,
    ) -> Result<Webhook, CrmError> {
        let url = self.check_url(&input.url).await?;
        let types = check_types(&input.types)?;
        check_description(input.description.as_deref())?;
        let now = self.clock.now();
        let secret = new_secret();
        // What committed before now has its place in the feed first, so the
        // cursor below is after it (PostgreSQL).
        store::sequence_changes(&self.store).await?;
        let mut tx = self.store.begin().await?;
        if store::count_webhooks(tx.conn(), tenant).await? >= MAX_WEBHOOKS {
            return Err(invalid(format!(
                "a tenant has at most {MAX_WEBHOOKS} webhook subscriptions"
            )));
        }
        let row = WebhookRow {
            id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
            tenant_id: tenant.to_string(),
            url,
            types: serde_json::to_string(&types).expect("strings serialise"),
            description: input.description,
            enabled: i64::from(input.enabled.unwrap_or(true)),
            secret: secret.clone(),
            previous_secret: None,
            previous_until: None,
            cursor: store::last_change_pos(tx.conn(), tenant).await?,
            failing_since: None,
            disabled_reason: None,
            created_at: now,
            updated_at: now,
        };
        store::insert_webhook(tx.conn(), &row).await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "webhook.create",
            &row.id,
            &json!({ "url": row.url, "types": types }),
        )
        .await?;
        tx.commit().await?;
        Ok(Webhook {
            secret: Some(secret),
            ..view(&row)
        })
    }

    pub async fn list(&self, tenant: &str) -> Result<Vec<Webhook>, CrmError> {
        let mut conn = self.store.conn().await?;
        Ok(store::webhooks(&mut conn, tenant)
            .await?
            .iter()
            .map(view)
            .collect())
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<Webhook>, CrmError> {
        let mut conn = self.store.conn().await?;
        Ok(store::webhook(&mut conn, tenant, id)
            .await?
            .as_ref()
            .map(view))
    }

    /// Changes a subscription; `None` if there is none with that id.
    pub async fn update(
        &self,
        tenant: &str,
        actor: &str,
        id: &str,
        patch: WebhookPatch,
    ) -> Result<Option<Webhook>, CrmError> {
        let url = match &patch.url {
            Some(u) => Some(self.check_url(u).await?),
            None => None,
        };
        let types = patch.types.as_deref().map(check_types).transpose()?;
        check_description(patch.description.as_deref())?;
        let mut tx = self.store.begin().await?;
        let Some(mut row) = store::webhook(tx.conn(), tenant, id).await? else {
            return Ok(None);
        };
        if let Some(u) = url {
            row.url = u;
        }
        if let Some(t) = &types {
            row.types = serde_json::to_string(t).expect("strings serialise");
        }
        if let Some(d) = patch.description.clone() {
            row.description = Some(d);
        }
        if let Some(e) = patch.enabled {
            row.enabled = i64::from(e);
            if e {
                row.disabled_reason = None;
                row.failing_since = None;
            }
        }
        row.updated_at = self.clock.now();
        store::update_webhook(tx.conn(), &row).await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "webhook.update",
            id,
            &json!({ "url": patch.url, "types": types, "enabled": patch.enabled }),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(view(&row)))
    }

    /// Deletes a subscription and its queue.
    pub async fn delete(&self, tenant: &str, actor: &str, id: &str) -> Result<bool, CrmError> {
        let mut tx = self.store.begin().await?;
        if !store::delete_webhook(tx.conn(), tenant, id).await? {
            return Ok(false);
        }
        store::audit(tx.conn(), tenant, actor, "webhook.delete", id, &json!({})).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A new signing secret; the old one also signs for the overlap, so
    /// receivers can switch without losing a message.
    pub async fn rotate_secret(
        &self,
        tenant: &str,
        actor: &str,
        id: &str,
    ) -> Result<Option<Webhook>, CrmError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let Some(mut row) = store::webhook(tx.conn(), tenant, id).await? else {
            return Ok(None);
        };
        let secret = new_secret();
        row.previous_secret = Some(std::mem::replace(&mut row.secret, secret.clone()));
        row.previous_until = Some(now + self.policy.overlap.as_millis() as i64);
        row.updated_at = now;
        store::update_webhook(tx.conn(), &row).await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "webhook.rotate-secret",
            id,
            &json!({ "previous_valid_until": row.previous_until }),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Webhook {
            secret: Some(secret),
            ..view(&row)
        }))
    }

    /// The subscription's latest deliveries, newest first, with their attempts.
    pub async fn deliveries(
        &self,
        tenant: &str,
        id: &str,
        limit: i64,
    ) -> Result<Option<Vec<Delivery>>, CrmError> {
        if !(1..=200).contains(&limit) {
            return Err(invalid("limit must be between 1 and 200"));
        }
        let mut conn = self.store.conn().await?;
        if store::webhook(&mut conn, tenant, id).await?.is_none() {
            return Ok(None);
        }
        let rows = store::deliveries(&mut conn, id, limit).await?;
        let from = rows.last().map_or(0, |r| r.seq);
        let mut attempts = store::attempts_of(&mut conn, id, from).await?;
        Ok(Some(
            rows.into_iter()
                .map(|r| {
                    let mine: Vec<DeliveryAttempt> = attempts
                        .iter()
                        .filter(|a| a.delivery_seq == r.seq)
                        .map(|a| DeliveryAttempt {
                            at: a.at,
                            status: a.status,
                            error: a.error.clone(),
                            latency_ms: a.latency_ms,
                            response: a.response.clone(),
                            host: a.host.clone(),
                        })
                        .collect();
                    attempts.retain(|a| a.delivery_seq != r.seq);
                    Delivery {
                        id: r.seq,
                        message_id: r.message_id,
                        kind: r.kind,
                        status: r.status,
                        attempts: r.attempts,
                        next_at: r.next_at,
                        created_at: r.created_at,
                        done_at: r.done_at,
                        last_status: r.last_status,
                        last_error: r.last_error,
                        attempt_log: mine,
                    }
                })
                .collect(),
        ))
    }

    /// Sends a delivery again now, with the same `webhook-id`.
    pub async fn redeliver(&self, tenant: &str, id: &str, delivery: i64) -> Result<bool, CrmError> {
        let mut tx = self.store.begin().await?;
        if store::webhook(tx.conn(), tenant, id).await?.is_none() {
            return Ok(false);
        }
        let done = store::redeliver(tx.conn(), id, delivery, self.clock.now()).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Queues a `webhook.test` message to the subscription; returns its id.
    pub async fn send_test(&self, tenant: &str, id: &str) -> Result<Option<String>, CrmError> {
        let now = self.clock.now();
        let message = uuid::Uuid::now_v7().to_string();
        let mut tx = self.store.begin().await?;
        if store::webhook(tx.conn(), tenant, id).await?.is_none() {
            return Ok(None);
        }
        let payload = json!({
            "type": "webhook.test",
            "timestamp": rfc3339(now),
            "data": { "id": message, "webhook_id": id, "at": now },
        })
        .to_string();
        store::queue_deliveries(
            tx.conn(),
            &[store::NewDelivery {
                webhook_id: id,
                tenant_id: tenant,
                message_id: &message,
                kind: "webhook.test",
                ordering: "",
                payload: &payload,
                at: now,
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(message))
    }

    /// This host's dispatcher: works until the task is aborted.
    pub fn run(&self, host: String) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match this.work(&host).await {
                    Ok(0) => tokio::time::sleep(this.policy.poll).await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("webhook dispatcher: {e}");
                        tokio::time::sleep(this.policy.poll).await;
                    }
                }
            }
        })
    }

    /// One round of the dispatcher; returns how many deliveries it attempted.
    pub async fn work(&self, host: &str) -> Result<usize, CrmError> {
        // PostgreSQL: committed changes get their place before anyone looks.
        store::sequence_changes(&self.store).await?;
        let now = self.clock.now();
        let failing_before = now - self.policy.horizon.as_millis() as i64;
        // Only reads until there is work: an idle dispatcher must not take
        // SQLite's one writer several times a second on every host.
        let (new, due, failing) = {
            let mut conn = self.store.conn().await?;
            store::dispatch_waiting(&mut conn, now, failing_before).await?
        };
        if new {
            self.fan_out().await?;
        }
        if failing {
            self.disable_failing().await?;
        }
        let attempted = if new || due {
            self.deliver_due(host).await?
        } else {
            0
        };
        let mut conn = self.store.conn().await?;
        let (depth, oldest) = store::delivery_backlog(&mut conn).await?;
        self.metrics.webhook_queue.set(depth);
        let age = oldest.map_or(0.0, |o| (self.clock.now() - o).max(0) as f64 / 1000.0);
        self.metrics.webhook_oldest_seconds.set(age);
        Ok(attempted)
    }

    /// Turns every subscription's new changes into deliveries.
    async fn fan_out(&self) -> Result<(), CrmError> {
        let backend = self.store.backend();
        let mut tx = self.store.begin().await?;
        let subs = store::take_webhooks(tx.conn(), backend, 1000).await?;
        for w in subs {
            let types: Vec<ChangeType> = serde_json::from_str::<Vec<String>>(&w.types)
                .unwrap_or_default()
                .iter()
                .filter_map(|t| ChangeType::parse(t).ok())
                .collect();
            let last = store::last_change_pos(tx.conn(), &w.tenant_id).await?;
            if last <= w.cursor {
                continue;
            }
            const PAGE: i64 = 2000;
            let changes =
                store::changes_after(tx.conn(), &w.tenant_id, w.cursor, &types, PAGE).await?;
            let moved_to = if (changes.len() as i64) < PAGE {
                last
            } else {
                changes
                    .last()
                    .and_then(|c| c.cursor.parse().ok())
                    .unwrap_or(last)
            };
            let payloads: Vec<String> = changes
                .iter()
                .map(|c| {
                    json!({ "type": c.kind, "timestamp": rfc3339(c.at), "data": c }).to_string()
                })
                .collect();
            let rows: Vec<store::NewDelivery> = changes
                .iter()
                .zip(&payloads)
                .map(|(c, p)| store::NewDelivery {
                    webhook_id: &w.id,
                    tenant_id: &w.tenant_id,
                    message_id: &c.id,
                    kind: c.kind.as_str(),
                    ordering: c.customer_id.as_deref().unwrap_or(""),
                    payload: p,
                    at: self.clock.now(),
                })
                .collect();
            store::queue_deliveries(tx.conn(), &rows).await?;
            store::set_cursor(tx.conn(), &w.id, moved_to).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Disables subscriptions that failed for the whole horizon.
    async fn disable_failing(&self) -> Result<(), CrmError> {
        let now = self.clock.now();
        let before = now - self.policy.horizon.as_millis() as i64;
        let mut tx = self.store.begin().await?;
        for mut w in store::failing_before(tx.conn(), before).await? {
            let reason = format!(
                "every delivery failed for {} hours",
                self.policy.horizon.as_secs() / 3600
            );
            w.enabled = 0;
            w.disabled_reason = Some(reason.clone());
            w.updated_at = now;
            store::update_webhook(tx.conn(), &w).await?;
            store::audit(
                tx.conn(),
                &w.tenant_id,
                "webhook-dispatcher",
                "webhook.disable",
                &w.id,
                &json!({ "reason": reason, "failing_since": w.failing_since }),
            )
            .await?;
            tracing::warn!(webhook = %w.id, "{reason}: disabled");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims and sends due deliveries, a chunk at a time, until none is left.
    async fn deliver_due(&self, host: &str) -> Result<usize, CrmError> {
        let mut attempted = 0;
        loop {
            let claim = format!("{host}/{}", uuid::Uuid::now_v7().simple());
            let now = self.clock.now();
            let lease_until = now + self.policy.lease.as_millis() as i64;
            let claimed = {
                let backend = self.store.backend();
                let mut tx = self.store.begin().await?;
                let c = store::claim_deliveries(
                    tx.conn(),
                    backend,
                    &claim,
                    now,
                    lease_until,
                    self.policy.chunk,
                )
                .await?;
                tx.commit().await?;
                c
            };
            if claimed.is_empty() {
                return Ok(attempted);
            }
            attempted += claimed.len();
            let heartbeat = self.heartbeat(claim.clone());
            let secrets = self.secrets(&claimed).await;
            let results = futures::future::join_all(
                claimed
                    .iter()
                    .map(|d| self.attempt(d, secrets.get(&d.webhook_id))),
            )
            .await;
            heartbeat.abort();
            // On an error nothing was written: the lease runs out and the
            // chunk is sent again then (at least once).
            self.record(&claim, host, &claimed, results).await?;
        }
    }

    /// The subscriptions of `claimed` by id: url and signing secrets.
    async fn secrets(
        &self,
        claimed: &[store::DueDelivery],
    ) -> std::collections::HashMap<String, WebhookRow> {
        let mut out = std::collections::HashMap::new();
        if let Ok(mut conn) = self.store.conn().await {
            for d in claimed {
                if out.contains_key(&d.webhook_id) {
                    continue;
                }
                if let Ok(Some(w)) = store::webhook(&mut conn, &d.tenant_id, &d.webhook_id).await {
                    out.insert(d.webhook_id.clone(), w);
                }
            }
        }
        out
    }

    /// Renews the claim's lease every quarter of it while the chunk is sent.
    fn heartbeat(&self, claim: String) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let every = this.policy.lease / 4;
            loop {
                tokio::time::sleep(every).await;
                let until = this.clock.now() + this.policy.lease.as_millis() as i64;
                if let Ok(mut conn) = this.store.conn().await {
                    let _ = store::renew_deliveries(&mut conn, &claim, until).await;
                }
            }
        })
    }

    /// Sends one delivery; what came of it.
    async fn attempt(&self, d: &store::DueDelivery, w: Option<&WebhookRow>) -> Sent {
        let started = std::time::Instant::now();
        let Some(w) = w.filter(|w| w.enabled == 1) else {
            return Sent::failed(None, "the subscription is disabled or gone".into(), 0);
        };
        // An address in the URL itself is checked here; a name's addresses by
        // the client's resolver, as it connects.
        if let Err(why) = self.egress.check_url(&w.url) {
            return Sent::failed(None, format!("refused: {why}"), 0);
        }
        let now = self.clock.now();
        let ts = now / 1000;
        let mut signatures = Vec::new();
        let mut keys = vec![w.secret.as_str()];
        if let (Some(p), Some(until)) = (&w.previous_secret, w.previous_until) {
            if until > now {
                keys.push(p);
            }
        }
        for k in keys {
            match standardwebhooks::Webhook::new(k)
                .and_then(|h| h.sign(&d.message_id, ts, d.payload.as_bytes()))
            {
                Ok(s) => signatures.push(s),
                Err(e) => return Sent::failed(None, format!("cannot sign: {e}"), 0),
            }
        }
        let sent = self
            .client
            .post(&w.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.message_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(d.payload.clone())
            .send()
            .await;
        let result = match sent {
            Ok(mut resp) => {
                let status = resp.status();
                let mut body: Vec<u8> = Vec::new();
                // At most 64 KiB of the answer is read.
                while body.len() < RESPONSE_READ {
                    match resp.chunk().await {
                        Ok(Some(c)) => body.extend_from_slice(&c),
                        _ => break,
                    }
                }
                body.truncate(RESPONSE_KEPT);
                let text = String::from_utf8_lossy(&body).into_owned();
                let ms = started.elapsed().as_millis() as i64;
                if status.is_success() {
                    Sent {
                        ok: true,
                        status: Some(status.as_u16() as i64),
                        error: None,
                        response: Some(text),
                        latency_ms: ms,
                    }
                } else {
                    let why = if status.is_redirection() {
                        format!("HTTP {status} (redirects are not followed)")
                    } else {
                        format!("HTTP {status}")
                    };
                    let mut s = Sent::failed(Some(status.as_u16() as i64), why, ms);
                    s.response = Some(text);
                    s
                }
            }
            Err(e) => {
                let mut why = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    why = format!("{why}: {s}");
                    src = s.source();
                }
                Sent::failed(None, why, started.elapsed().as_millis() as i64)
            }
        };
        self.metrics
            .webhook_seconds
            .with_label_values(&[] as &[&str])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Writes a chunk's results in one transaction.
    async fn record(
        &self,
        claim: &str,
        host: &str,
        claimed: &[store::DueDelivery],
        results: Vec<Sent>,
    ) -> Result<(), CrmError> {
        let now = self.clock.now();
        let horizon = self.policy.horizon.as_millis() as i64;
        let mut tx = self.store.begin().await?;
        for (d, r) in claimed.iter().zip(results) {
            let outcome = if r.ok {
                "delivered"
            } else if now - d.created_at >= horizon {
                "dead"
            } else {
                "pending"
            };
            let a = store::Attempt {
                delivery_seq: d.seq,
                webhook_id: d.webhook_id.clone(),
                at: now,
                status: r.status,
                error: r.error,
                latency_ms: r.latency_ms,
                response: r.response,
                outcome,
                next_at: now + self.backoff(d.attempts),
            };
            if store::record_attempt(tx.conn(), claim, host, &a).await? {
                let failing = (!r.ok).then_some(now);
                store::set_failing(tx.conn(), &d.webhook_id, failing).await?;
                let label = match outcome {
                    "pending" => "failed",
                    o => o,
                };
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&[label])
                    .inc();
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The delay before the retry after `attempts` earlier attempts.
    fn backoff(&self, attempts: i64) -> i64 {
        let first = self.policy.first_delay.as_millis() as f64;
        let max = self.policy.max_delay.as_millis() as f64;
        let base = (first * 2f64.powi(attempts.clamp(0, 30) as i32)).min(max);
        // ±20 %, from the uuid's random bits (no rng to carry around).
        let r = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
        (base * (0.8 + 0.4 * r)) as i64
    }

    /// Checks a URL's form and, for a name, that it resolves somewhere allowed.
    async fn check_url(&self, url: &str) -> Result<String, CrmError> {
        let u = self.egress.check_url(url).map_err(invalid)?;
        if let Some(url::Host::Domain(name)) = u.host() {
            self.egress
                .resolve(name, u.port_or_known_default().unwrap_or(443))
                .await
                .map_err(|e| invalid(format!("url: {e}")))?;
        }
        Ok(u.to_string())
    }
}

/// What an attempt came to.
struct Sent {
    ok: bool,
    status: Option<i64>,
    error: Option<String>,
    response: Option<String>,
    latency_ms: i64,
}

impl Sent {
    fn failed(status: Option<i64>, why: String, latency_ms: i64) -> Sent {
        Sent {
            ok: false,
            status,
            error: Some(why),
            response: None,
            latency_ms,
        }
    }
}

fn view(w: &WebhookRow) -> Webhook {
    Webhook {
        id: w.id.clone(),
        url: w.url.clone(),
        types: serde_json::from_str(&w.types).unwrap_or_default(),
        description: w.description.clone(),
        enabled: w.enabled == 1,
        disabled_reason: w.disabled_reason.clone(),
        failing_since: w.failing_since,
        previous_secret_until: w.previous_until,
        created_at: w.created_at,
        updated_at: w.updated_at,
        secret: None,
    }
}

/// `whsec_` and 32 random bytes in base64 (Standard Webhooks' form).
fn new_secret() -> String {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn check_types(types: &[String]) -> Result<Vec<String>, CrmError> {
    let mut out = Vec::new();
    for t in types {
        let t = ChangeType::parse(t).map_err(invalid)?.as_str().to_string();
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn check_description(d: Option<&str>) -> Result<(), CrmError> {
    match d.and_then(|d| crate::domain::text::text_problem(d, 500)) {
        Some(p) => Err(invalid(format!("description {p}"))),
        None => Ok(()),
    }
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The payload of a change as a webhook carries it (for the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct WebhookPayload {
    /// The change's type, or `webhook.test`.
    #[serde(rename = "type")]
    kind: String,
    /// When the change took effect, RFC 3339.
    timestamp: String,
    /// The change as `GET /v1/changes` shows it.
    data: crate::domain::changes::Change,
}
