//! Reports: the audit log and the analytics (funnel, segments, scores), read-only.

use super::CrmError;
use crate::domain::{day_of, time::Clock};
use crate::packs::Packs;
use crate::store::{self, AuditEntry, ScoreDistribution, SegmentSize, Store};
use stagecraft_plugin::snapshot::DAY_MS;

#[derive(Clone, Debug)]
pub struct Reports {
    store: Store,
    packs: Packs,
    /// The one clock (see [`Clock`]).
    clock: Clock,
}

/// Customers per stage: the lifecycle owner's graph in rank order, those with
/// no stage, and stages outside the graph (set by hand, or by a former owner).
#[derive(Debug, Clone)]
pub struct Funnel {
    pub owner: Option<String>,
    /// (stage, customers) in the owner's order.
    pub stages: Vec<(crate::domain::Stage, i64)>,
    pub no_stage: i64,
    pub other_stages: Vec<(String, i64)>,
}

impl Reports {
    pub(crate) fn new(store: Store, packs: Packs, clock: Clock) -> Reports {
        Reports {
            store,
            packs,
            clock,
        }
    }

    /// The newest `limit` entries of `tenant`'s audit log.
    pub async fn audit_log(&self, tenant: &str, limit: i64) -> Result<Vec<AuditEntry>, CrmError> {
        let mut conn = self.store.conn().await?;
        Ok(store::audit_log(&mut conn, tenant, limit).await?)
    }

    pub async fn funnel(&self, tenant: &str) -> Result<Funnel, CrmError> {
        let mut conn = self.store.conn().await?;
        let mut counts = store::stage_counts(&mut conn, tenant).await?;
        let packs = self.packs.for_tenant(tenant);
        let owner = packs.lifecycle_owner();
        let mut stages = Vec::new();
        if let Some(o) = owner {
            let mut graph = o.plugin.manifest().stages.clone();
            graph.sort_by_key(|st| st.rank);
            for st in graph {
                let n = counts
                    .iter()
                    .position(|(id, _)| id.as_deref() == Some(st.id.as_str()))
                    .map(|i| counts.remove(i).1)
                    .unwrap_or(0);
                stages.push((st, n));
            }
        }
        let no_stage = counts
            .iter()
            .position(|(id, _)| id.is_none())
            .map(|i| counts.remove(i).1)
            .unwrap_or(0);
        Ok(Funnel {
            owner: owner.map(|o| o.name().to_string()),
            stages,
            no_stage,
            other_stages: counts
                .into_iter()
                .filter_map(|(id, n)| Some((id?, n)))
                .collect(),
        })
    }

    pub async fn segment_sizes(&self, tenant: &str) -> Result<Vec<SegmentSize>, CrmError> {
        let mut conn = self.store.conn().await?;
        Ok(store::segment_sizes(&mut conn, tenant).await?)
    }

    /// Score distributions per plugin, and the open follow-ups due by the end
    /// of today (UTC).
    pub async fn scores(&self, tenant: &str) -> Result<(Vec<ScoreDistribution>, i64), CrmError> {
        let mut conn = self.store.conn().await?;
        let dist = store::score_distributions(&mut conn, tenant).await?;
        let end_of_today = (day_of(self.clock.now()) + 1) * DAY_MS;
        let due = store::follow_ups_due(&mut conn, tenant, end_of_today).await?;
        Ok((dist, due))
    }
}
