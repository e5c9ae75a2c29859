//! Dry-run: the tenant's plugins as they run now against the same set with a
//! candidate in the plugin's place, through the one evaluation path; nothing is
//! written.

use super::*;

/// One customer as a set of plugins leaves them, for the plugin under test: its
/// score, band, reasons and segments, and the customer's stage and tags after
/// every plugin ran (what a rescore with that set would write).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub value: Option<f64>,
    pub band: Option<String>,
    pub reasons: Vec<String>,
    pub segments: Vec<String>,
    pub stage: Option<String>,
    /// The customer's tags afterwards, sorted.
    pub tags: Vec<String>,
    pub error: Option<String>,
}

/// What `name` and the customer come to under a set of plugins (see [`Verdict`]).
fn verdict(
    name: &str,
    c: &CustomerRecord,
    (outputs, failures): &Evaluated,
    fx: &Effects,
) -> Verdict {
    let mut v = Verdict {
        stage: fx
            .stage_moves
            .last()
            .map(|m| m.to.clone())
            .or_else(|| c.stage.clone()),
        ..Default::default()
    };
    let mut tags: Vec<String> = c
        .tags
        .iter()
        .filter(|t| !fx.tags_removed.contains(t))
        .chain(&fx.tags_added)
        .cloned()
        .collect();
    tags.sort();
    v.tags = tags;
    if let Some(o) = outputs.iter().find(|o| o.name == name) {
        if let Some(s) = &o.score {
            v.value = Some(s.value);
            v.band = s.band.clone();
            v.reasons = s.reasons.iter().map(|r| r.text.clone()).collect();
        }
        if let Some(segs) = &o.segments {
            v.segments = segs.iter().map(|(s, _)| s.clone()).collect();
        }
    }
    v.error = failures
        .iter()
        .find(|f| f.plugin == name)
        .map(|f| f.message.clone());
    v
}

/// What a dry-run found.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct DryRunReport {
    pub plugin: String,
    pub active: Option<Pair>,
    pub candidate: Pair,
    pub candidate_rules_inline: bool,
    /// The `now` the plugins were told.
    pub as_of: i64,
    pub customers: i64,
    pub changed: ChangeCounts,
    /// "before → after" band moves and how many customers make each.
    pub band_moves: BTreeMap<String, i64>,
    /// The customers whose score moves most, with reasons on both sides.
    pub largest: Vec<CustomerDiff>,
    /// Customers the candidate failed on, with its error (at most
    /// [`LISTED_FAILURES`]; `changed.errors_after` counts them all).
    pub failures: Vec<CustomerFailure>,
}

/// A customer a plugin failed on in a dry-run or a rescore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CustomerFailure {
    pub customer_id: String,
    pub plugin: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ChangeCounts {
    pub bands: i64,
    pub scores: i64,
    pub segments: i64,
    pub stages: i64,
    /// Customers whose tags differ afterwards.
    pub tags: i64,
    pub errors_before: i64,
    pub errors_after: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CustomerDiff {
    pub customer_id: String,
    pub delta: f64,
    pub before: Verdict,
    pub after: Verdict,
}

impl DryRunReport {
    fn add(&mut self, id: &str, before: Verdict, after: Verdict, top: usize) {
        self.customers += 1;
        if let Some(e) = &after.error {
            if self.failures.len() < LISTED_FAILURES {
                self.failures.push(CustomerFailure {
                    customer_id: id.to_string(),
                    plugin: self.plugin.clone(),
                    message: e.clone(),
                });
            }
        }
        let c = &mut self.changed;
        c.errors_before += before.error.is_some() as i64;
        c.errors_after += after.error.is_some() as i64;
        if before.band != after.band {
            c.bands += 1;
            let name = |b: &Option<String>| b.clone().unwrap_or_else(|| "none".into());
            *self
                .band_moves
                .entry(format!("{} → {}", name(&before.band), name(&after.band)))
                .or_default() += 1;
        }
        c.scores += (before.value != after.value) as i64;
        c.segments += (before.segments != after.segments) as i64;
        c.stages += (before.stage != after.stage) as i64;
        c.tags += (before.tags != after.tags) as i64;
        let delta = after.value.unwrap_or(0.0) - before.value.unwrap_or(0.0);
        // Listed: customers whose outcome changes (a reworded reason alone is not one).
        let changes = before.value != after.value
            || before.band != after.band
            || before.segments != after.segments
            || before.stage != after.stage
            || before.tags != after.tags
            || before.error != after.error;
        if changes && top > 0 {
            self.largest.push(CustomerDiff {
                customer_id: id.to_string(),
                delta,
                before,
                after,
            });
            self.largest.sort_by(|a, b| {
                b.delta
                    .abs()
                    .total_cmp(&a.delta.abs())
                    .then(a.customer_id.cmp(&b.customer_id))
            });
            self.largest.truncate(top);
        }
    }
}

impl Registry {
    /// The active pair and the candidate as runnable packs.
    async fn dry_run_pair(
        &self,
        tenant: &str,
        name: &str,
        c: &Candidate,
    ) -> Result<(Option<ActivePack>, ActivePack, Pair), RegistryError> {
        self.ensure_plugin(tenant, name).await?;
        let packs = self.packs.for_tenant(tenant);
        let active = packs.packs.iter().find(|p| p.name() == name).cloned();
        let version = match (&c.version, &active) {
            (Some(v), _) => v.clone(),
            (None, Some(a)) => a.version.clone(),
            (None, None) => {
                return Err(RegistryError::Invalid(format!(
                    "{name} is not active: name the candidate version"
                )))
            }
        };
        let plugin = self.load_version(tenant, name, &version).await?;
        let (rules, rules_version) = match (&c.rules, c.rules_version) {
            (Some(r), _) => {
                let text = serde_json::to_string(r).expect("JSON serialises");
                let (p, t) = (plugin.clone(), text.clone());
                crate::spawn_blocking(move || check_rules(&p, &t))
                    .await
                    .expect("rules check task")?;
                (Some(text), None)
            }
            (None, Some(n)) => {
                let mut conn = self.store.conn().await?;
                let r = store::rule_set(&mut conn, tenant, name, n)
                    .await?
                    .ok_or_else(|| {
                        RegistryError::NotFound(format!("rule set {n} of {name} not found"))
                    })?;
                (Some(r), Some(n))
            }
            (None, None) if c.version.is_none() => (
                active.as_ref().and_then(|a| a.rules.clone()),
                active.as_ref().and_then(|a| a.rules_version),
            ),
            (None, None) => (None, None),
        };
        // A plugin not yet active is previewed as the lifecycle owner when it has
        // stages and no plugin owns the tenant's lifecycle (what activating it
        // with `owns_lifecycle` would do).
        let owns = match &active {
            Some(a) => a.owns_lifecycle,
            None => plugin.manifest().lifecycle && packs.lifecycle_owner().is_none(),
        };
        let candidate = ActivePack {
            plugin,
            version: version.clone(),
            rules,
            rules_version,
            owns_lifecycle: owns,
            granted_fields: active
                .as_ref()
                .map(|a| a.granted_fields.clone())
                .unwrap_or_default(),
        };
        Ok((
            active,
            candidate,
            Pair {
                version,
                rules_version,
            },
        ))
    }

    /// Loads customers with what a plugin needs to see them.
    pub(super) async fn load_batch(
        &self,
        tenant: &str,
        ids: &[String],
        now: i64,
    ) -> Result<Vec<(CustomerRecord, Vec<EventRecord>)>, StoreError> {
        let mut conn = self.store.conn().await?;
        // A few statements for the whole chunk (see `store::bulk`).
        store::load_customers(&mut conn, tenant, ids, now, RECENT_EVENTS).await
    }

    /// Compares the candidate with the active pair over `ids`; writes nothing.
    async fn compare(
        &self,
        tenant: &str,
        name: &str,
        (active, candidate, pair): (Option<ActivePack>, ActivePack, Pair),
        (ids, top, now): (Vec<String>, usize, i64),
        job: Option<&str>,
    ) -> Result<DryRunReport, RegistryError> {
        let mut report = DryRunReport {
            as_of: now,
            plugin: name.to_string(),
            active: active.as_ref().map(|a| Pair {
                version: a.version.clone(),
                rules_version: a.rules_version,
            }),
            candidate: pair,
            ..Default::default()
        };
        // The tenant's set as it runs now, and the same with the candidate in
        // the place of the plugin (or added: first if it owns the lifecycle).
        let now_set = self.packs.for_tenant(tenant);
        let mut with_candidate = (*now_set).clone();
        match with_candidate.packs.iter().position(|p| p.name() == name) {
            Some(i) => with_candidate.packs[i] = candidate,
            None if candidate.owns_lifecycle => with_candidate.packs.insert(0, candidate),
            None => with_candidate.packs.push(candidate),
        }
        let sets = Arc::new((
            now_set,
            with_candidate,
            Strikes::default(),
            Strikes::default(),
        ));
        let started = std::time::Instant::now();
        let mut evaluated = 0usize;
        for chunk in ids.chunks(RESCORE_CHUNK) {
            // An inline dry-run answers a request: past its budget it stops with
            // an error that says what to do, instead of holding the client.
            if job.is_none() && started.elapsed() > INLINE_DRY_RUN_BUDGET {
                return Err(RegistryError::Invalid(format!(
                    "the dry-run went over its budget of {} s after {evaluated} of {} customers; \
                     dry-run a smaller sample, or every customer with \"all\": true as a job",
                    INLINE_DRY_RUN_BUDGET.as_secs(),
                    ids.len()
                )));
            }
            evaluated += chunk.len();
            let batch = Arc::new(self.load_batch(tenant, chunk, now).await?);
            let ctx = CallContext {
                now,
                tenant: tenant.to_string(),
            };
            let (sets, bt, plugin) = (sets.clone(), batch.clone(), name.to_string());
            let verdicts = crate::spawn_blocking(move || {
                let (now_set, with_candidate, before_strikes, after_strikes) = &*sets;
                let before = reevaluate(now_set, &ctx, &bt, None, before_strikes);
                let after = reevaluate(with_candidate, &ctx, &bt, None, after_strikes);
                bt.iter()
                    .zip(before.iter().zip(&after))
                    .map(|((c, _), ((eb, fb), (ea, fa)))| {
                        (verdict(&plugin, c, eb, fb), verdict(&plugin, c, ea, fa))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("dry-run task");
            for ((c, _), (b, a)) in batch.iter().zip(verdicts) {
                report.add(&c.id, b, a, top);
            }
            if let Some(id) = job {
                let mut conn = self.store.conn().await?;
                store::add_progress(&mut conn, id, chunk.len() as i64, self.clock.now()).await?;
                self.packs
                    .metrics()
                    .job_customers
                    .with_label_values(&["dry-run"])
                    .inc_by(chunk.len() as u64);
            }
        }
        Ok(report)
    }

    /// Dry-runs a candidate: inline for a sample of at most 1,000 customers,
    /// otherwise as a job (returns `Err(job id)` in the `Ok` side's second variant).
    pub async fn dry_run(
        &self,
        tenant: &str,
        name: &str,
        c: Candidate,
    ) -> Result<DryRunOutcome, RegistryError> {
        let sample = match (c.all, c.sample) {
            (true, _) => None,
            (false, Some(n)) if n < 1 => {
                return Err(RegistryError::Invalid("sample must be at least 1".into()))
            }
            (false, n) => Some(n.unwrap_or(INLINE_DRY_RUN)),
        };
        let top = c.top.unwrap_or(20).min(200);
        let now = c.now.unwrap_or_else(|| self.clock.now());
        crate::domain::time::check_as_of(now).map_err(RegistryError::Invalid)?;
        let inline_rules = c.rules.is_some();
        let (active, candidate, pair) = self.dry_run_pair(tenant, name, &c).await?;
        let mut conn = self.store.conn().await?;
        let ids = store::customer_ids(&mut conn, tenant, sample).await?;
        drop(conn);
        if sample.is_some_and(|n| n <= INLINE_DRY_RUN) {
            let mut r = self
                .compare(
                    tenant,
                    name,
                    (active, candidate, pair),
                    (ids, top, now),
                    None,
                )
                .await?;
            r.candidate_rules_inline = inline_rules;
            return Ok(DryRunOutcome::Done(Box::new(r)));
        }
        let job = format!("job_{}", uuid::Uuid::now_v7().simple());
        let params =
            json!({ "plugin": name, "candidate": pair, "customers": ids.len(), "now": now });
        let mut conn = self.store.conn().await?;
        store::create_job(
            &mut conn,
            tenant,
            &job,
            "dry-run",
            &params,
            ids.len() as i64,
            self.clock.now(),
        )
        .await?;
        drop(conn);
        let (crm, tenant, name, id) = (
            self.clone(),
            tenant.to_string(),
            name.to_string(),
            job.clone(),
        );
        tokio::spawn(async move {
            let mut r = crm
                .compare(
                    &tenant,
                    &name,
                    (active, candidate, pair),
                    (ids, top, now),
                    Some(&id),
                )
                .await;
            let mut conn = match crm.store.conn().await {
                Ok(c) => c,
                Err(e) => return tracing::error!("dry-run job {id}: {e}"),
            };
            let end = match &mut r {
                Ok(rep) => {
                    rep.candidate_rules_inline = inline_rules;
                    // Customers the candidate failed on make the job end as
                    // `done_with_failures`, with their count on the job.
                    let mut result = json!(rep);
                    result["failed"] = json!(rep.changed.errors_after);
                    match store::add_failed(&mut conn, &id, rep.changed.errors_after).await {
                        Ok(()) => {
                            store::finish_job(&mut conn, &id, Ok(&result), crm.clock.now()).await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => {
                    store::finish_job(&mut conn, &id, Err(&e.to_string()), crm.clock.now()).await
                }
            };
            if let Err(e) = end {
                tracing::error!("dry-run job {id}: {e}");
            }
        });
        Ok(DryRunOutcome::Job(job))
    }
}

/// A dry-run's result, or the job computing it.
#[derive(Debug, Clone)]
pub enum DryRunOutcome {
    Done(Box<DryRunReport>),
    Job(String),
}
