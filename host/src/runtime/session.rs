//! A [`Session`]: one configured instance for a batch or an event, its calls
//! guarded by a deadline and a memory cap, their outputs checked.

use super::checks::{check_actions, check_memberships, check_score};
use super::contract::Bindings;
use super::encode::{encode_batch, encode_customer};
use super::*;
use stagecraft_plugin::snapshot::{self, Customer, Event};
use wasmtime::{Store, Trap};

/// One plugin instance, configured, for a batch or an event.
pub struct Session<'p> {
    pub(super) plugin: &'p LoadedPlugin,
    pub(super) store: Store<PluginState>,
    pub(super) bindings: Option<Bindings>,
    pub(super) failed: bool,
}

impl Session<'_> {
    /// Whether the instance can take another call: not after a failure, whose
    /// instance may be in any state.
    pub fn usable(&self) -> bool {
        !self.failed && self.bindings.is_some()
    }

    /// Values (of sensitive fields this plugin was granted) that must not reach
    /// the host log or an error message: they are replaced by `[withheld]`.
    pub fn withhold(&mut self, values: impl IntoIterator<Item = String>) {
        self.store.data_mut().withhold(values);
    }

    pub(super) fn arm(&mut self) {
        let limits = &self.plugin.runtime.inner.limits;
        let ticks = limits
            .call_deadline
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1) as u64;
        // +1: the current tick may be about to end.
        self.store.set_epoch_deadline(ticks + 1);
        if let Some(fuel) = limits.fuel {
            // Fuel is only enabled on the engine when configured, so this cannot fail.
            let _ = self.store.set_fuel(fuel);
        }
    }

    /// Runs one call into the guest with its bindings; see [`Session::run`].
    pub(super) fn guarded<R>(
        &mut self,
        f: impl FnOnce(&Bindings, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, RuntimeError> {
        let Some(b) = self.bindings.take() else {
            return Err(RuntimeError::Poisoned {
                plugin: self.plugin.label.to_string(),
            });
        };
        let r = self.run(|st| f(&b, st));
        self.bindings = Some(b);
        r
    }

    /// Runs guest code with a fresh deadline and turns any failure into a
    /// [`RuntimeError`] that says what happened. After a failure the instance is
    /// not used again: its memory may be in any state.
    pub(super) fn run<R>(
        &mut self,
        f: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, RuntimeError> {
        let plugin = self.plugin.label.to_string();
        if self.failed {
            return Err(RuntimeError::Poisoned { plugin });
        }
        self.arm();
        let result = f(&mut self.store);
        let said = self.store.data_mut().drain_stdio();
        result.map_err(|e| {
            self.failed = true;
            let limits = &self.plugin.runtime.inner.limits;
            if self.store.data().limiter.refused {
                return RuntimeError::MemoryLimit {
                    plugin,
                    cap_mib: limits.memory_bytes >> 20,
                };
            }
            let budget_ms = limits.call_deadline.as_millis();
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                return RuntimeError::Busy(limits.max_instances);
            }
            match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) | Some(Trap::OutOfFuel) => {
                    RuntimeError::Deadline { plugin, budget_ms }
                }
                Some(trap) => {
                    let mut message = trap.to_string();
                    if let Some(line) = said {
                        message.push_str(&format!(" (the plugin said: {line})"));
                    }
                    RuntimeError::Trap {
                        plugin,
                        message: crate::domain::text::clean_message(&message),
                    }
                }
                None => RuntimeError::Trap {
                    plugin,
                    message: crate::domain::text::clean_message(
                        &self.store.data().redact(&format!("{:#}", e.root_cause())),
                    ),
                },
            }
        })
    }

    pub(super) fn bad_output(&self, message: String) -> RuntimeError {
        RuntimeError::BadOutput {
            plugin: self.plugin.label.to_string(),
            message: crate::domain::text::clean_message(&self.store.data().redact(&message)),
        }
    }

    pub(super) fn plugin_error(&self, e: PluginError) -> RuntimeError {
        RuntimeError::Plugin {
            plugin: self.plugin.label.to_string(),
            error: self.redact_error(e),
        }
    }

    /// A plugin's error as the host keeps it: withheld values replaced, control
    /// characters cleaned and cut to [`budget::MAX_MESSAGE`] bytes, like a trap's.
    pub(super) fn redact_error(&self, e: PluginError) -> PluginError {
        e.map_message(|m| crate::domain::text::clean_message(&self.store.data().redact(m)))
    }

    /// Scores a batch: one result per customer, in order. A customer the plugin
    /// could not score, or whose score breaks the rules of the manifest, gets an
    /// error of its own; the others are unaffected.
    pub fn score(
        &mut self,
        ctx: &CallContext,
        batch: &[Customer<'_>],
    ) -> Result<Vec<Result<Score, PluginError>>, RuntimeError> {
        self.score_encoded(
            ctx,
            &encode_batch(batch, self.plugin.manifest().reads)?,
            batch.len(),
        )
    }

    /// Like [`Session::score`], for a batch already encoded (see [`encode_batch`]).
    // The generated binding takes `&Vec<u8>` for `list<u8>`.
    #[allow(clippy::ptr_arg)]
    pub fn score_encoded(
        &mut self,
        ctx: &CallContext,
        snapshot: &Vec<u8>,
        count: usize,
    ) -> Result<Vec<Result<Score, PluginError>>, RuntimeError> {
        let out = self
            .guarded(|b, st| b.score(st, ctx.now, &ctx.tenant, snapshot))?
            .map_err(|e| self.plugin_error(e))?;
        if out.len() != count {
            return Err(self.bad_output(format!("{} scores for {count} customers", out.len())));
        }
        let m = self.plugin.manifest();
        Ok(out
            .into_iter()
            .map(|r| {
                r.and_then(|s| check_score(m, s))
                    .map_err(|e| self.redact_error(e))
            })
            .collect())
    }

    /// The segments of each customer of a batch, in order.
    pub fn segment(
        &mut self,
        ctx: &CallContext,
        batch: &[Customer<'_>],
    ) -> Result<Vec<Result<Vec<Membership>, PluginError>>, RuntimeError> {
        let snapshot = encode_batch(batch, self.plugin.manifest().reads)?;
        let out = self
            .guarded(|b, st| b.segment(st, ctx.now, &ctx.tenant, &snapshot))?
            .map_err(|e| self.plugin_error(e))?;
        if out.len() != batch.len() {
            return Err(self.bad_output(format!(
                "{} segment lists for {} customers",
                out.len(),
                batch.len()
            )));
        }
        let m = self.plugin.manifest();
        Ok(out
            .into_iter()
            .map(|r| {
                r.and_then(|ms| check_memberships(m, ms))
                    .map_err(|e| self.redact_error(e))
            })
            .collect())
    }

    /// The actions the plugin proposes for an event just recorded for `customer`.
    /// Actions that break the manifest (undeclared stage, malformed tag, too many)
    /// fail the whole call: the pipeline applies all of a plugin's actions or none.
    pub fn on_event(
        &mut self,
        ctx: &CallContext,
        customer: &Customer<'_>,
        event: &Event<'_>,
    ) -> Result<Vec<Action>, RuntimeError> {
        let reads = self.plugin.manifest().reads;
        let c = encode_customer(customer, reads)?;
        let e = snapshot::encode_event(event).map_err(|e| RuntimeError::Snapshot(e.0))?;
        let actions = self
            .guarded(|b, st| b.on_event(st, ctx.now, &ctx.tenant, &c, &e))?
            .map_err(|e| self.plugin_error(e))?;
        check_actions(self.plugin.manifest(), ctx.now, &actions).map_err(|m| self.bad_output(m))?;
        Ok(actions)
    }

    /// The actions the plugin proposes when a wake it asked for is due
    /// (`ctx.now` is the wake's time). Checked like [`Session::on_event`]'s.
    pub fn on_wake(
        &mut self,
        ctx: &CallContext,
        customer: &Customer<'_>,
    ) -> Result<Vec<Action>, RuntimeError> {
        let c = encode_customer(customer, self.plugin.manifest().reads)?;
        let actions = self
            .guarded(|b, st| b.on_wake(st, ctx.now, &ctx.tenant, &c))?
            .map_err(|e| self.plugin_error(e))?;
        check_actions(self.plugin.manifest(), ctx.now, &actions).map_err(|m| self.bad_output(m))?;
        Ok(actions)
    }
}
