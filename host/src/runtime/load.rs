//! Loading: a component's bytes checked (budget, binary, world, imports),
//! compiled or taken from the cache, described, and its manifest, rules schema
//! and default rules validated; [`LoadedPlugin`] is the result.

use super::checks::truncate_for_message;
use super::contract::Pre;
use super::session::Session;
use super::*;
use wasmtime::component::Component;
use wasmtime::{Engine, Store};

impl Runtime {
    /// Checks, compiles (or takes from the cache) and describes a plugin.
    ///
    /// Rejected, each with a message naming the problem: bytes that are not wasm, a
    /// core module, code over the [`budget`], a component that does not export our
    /// `pack` interface (another world), one that imports anything not granted, one
    /// whose manifest is invalid or over its budget, whose rules schema is unusable,
    /// or whose own default rules its schema or its `configure` refuses.
    ///
    /// The compiled code is not written to the on-disk cache here: a caller that
    /// keeps the plugin says so with [`LoadedPlugin::keep_compiled`].
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedPlugin, RuntimeError> {
        check_binary(bytes)?;
        budget::check_code(bytes)?;
        let digest = cache::digest(bytes);
        let engine = &self.inner.engine;
        let (component, cached) = match self
            .inner
            .cache
            .as_ref()
            .and_then(|c| c.get(engine, &digest))
        {
            Some(c) => (c, true),
            None => {
                let _one_at_a_time = self
                    .inner
                    .compiling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let c = Component::new(engine, bytes)
                    .map_err(|e| RuntimeError::Invalid(format!("{e:#}")))?;
                (c, false)
            }
        };
        let version = check_world(engine, &component)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Invalid(format!("{e:#}")))?;
        let pre = Pre::new(version, pre).map_err(|e| {
            RuntimeError::WrongWorld(format!("{} with other types: {e:#}", version.pack_export()))
        })?;

        let mut plugin = LoadedPlugin {
            runtime: self.clone(),
            digest: digest.clone(),
            size: bytes.len(),
            component,
            cached,
            version,
            pre,
            label: Arc::from(format!("sha256:{}", &digest[..12])),
            manifest: None,
            rules_schema: None,
        };
        let ctx = CallContext {
            now: 0,
            tenant: String::new(),
        };
        let manifest: Manifest = {
            let mut s = plugin.instantiate(&ctx)?;
            s.guarded(|b, st| b.describe(st))?
        };
        validate_manifest(&manifest)?;
        let rules_schema = match &manifest.rules_schema {
            Some(text) => Some(Arc::new(
                schema::RulesSchema::compile(text).map_err(RuntimeError::BadManifest)?,
            )),
            None => None,
        };
        if let Some(schema) = &rules_schema {
            let defaults: serde_json::Value = serde_json::from_str(&manifest.default_rules)
                .map_err(|e| RuntimeError::BadManifest(format!("default rules: {e}")))?;
            schema.check(&defaults).map_err(|e| {
                RuntimeError::BadManifest(format!(
                    "the default rules do not fit the plugin's own rules schema: {e}"
                ))
            })?;
        }
        plugin.label = Arc::from(format!("{}@{}", manifest.name, manifest.version));
        plugin.manifest = Some(manifest);
        plugin.rules_schema = rules_schema;
        // A plugin must accept its own default rules, or nobody can enable it.
        plugin.session(&ctx, None).map_err(|e| match e {
            RuntimeError::Plugin { error, .. } => RuntimeError::BadManifest(format!(
                "the plugin rejects its own default rules: {error}"
            )),
            other => other,
        })?;
        Ok(plugin)
    }
}

pub(super) fn check_binary(bytes: &[u8]) -> Result<(), RuntimeError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(RuntimeError::NotWasm);
    }
    // Bytes 4..8: version (u16) and layer (u16); layer 1 is a component.
    match bytes[6..8] {
        [0, 0] => Err(RuntimeError::NotComponent),
        [1, 0] => Ok(()),
        _ => Err(RuntimeError::Invalid(
            "unknown WebAssembly binary layer".into(),
        )),
    }
}

/// Refuses imports beyond the grant, and finds the contract version whose
/// `pack` the component exports.
pub(super) fn check_world(engine: &Engine, component: &Component) -> Result<Version, RuntimeError> {
    let ty = component.component_type();
    let forbidden: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|n| !sandbox::import_allowed(n))
        .collect();
    if !forbidden.is_empty() {
        return Err(RuntimeError::ForbiddenImport(forbidden.join(", ")));
    }
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let Some(version) = Version::of_exports(exports.iter().map(String::as_str)) else {
        let list = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        return Err(RuntimeError::WrongWorld(list));
    };
    Ok(version)
}

pub(super) fn validate_manifest(m: &Manifest) -> Result<(), RuntimeError> {
    use crate::domain::text::{label_problem, text_problem};
    use budget::*;
    let bad = |msg: String| Err(RuntimeError::BadManifest(msg));
    if !is_slug(&m.name, 64) {
        return bad(format!(
            "name {:?} must be 1-64 characters of [a-z0-9-_]",
            truncate_for_message(&m.name)
        ));
    }
    let v = &m.version;
    if v.len() > MAX_VERSION || semver::Version::parse(v).is_err() {
        return bad(format!(
            "version {:?} is not a semantic version like 1.2.3 of at most {MAX_VERSION} bytes",
            truncate_for_message(v)
        ));
    }
    if let Some(p) = text_problem(&m.description, MAX_DESCRIPTION) {
        return bad(format!("the description {p}"));
    }
    if !(m.scoring || m.segmentation || m.lifecycle) {
        return bad("declares no capability (scoring, segmentation or lifecycle)".into());
    }
    if m.lifecycle && m.stages.is_empty() {
        return bad("owns the lifecycle but declares no stages".into());
    }
    for (what, n, max) in [
        ("stages", m.stages.len(), MAX_STAGES),
        ("segments", m.segments.len(), MAX_SEGMENT_DEFS),
        ("reason codes", m.reasons.len(), MAX_REASON_TEXTS),
        ("wanted fields", m.wants_fields.len(), MAX_WANTS_FIELDS),
    ] {
        if n > max {
            return bad(format!("{n} {what}, at most {max}"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &m.stages {
        if !is_slug(&s.id, 64) || !seen.insert(("stage", s.id.as_str())) {
            return bad(format!(
                "stage id {:?} is malformed or repeated",
                truncate_for_message(&s.id)
            ));
        }
        for label in std::iter::once(&s.label).chain(&s.label_zh) {
            if let Some(p) = label_problem(label, MAX_LABEL) {
                return bad(format!("the label of stage {} {p}", s.id));
            }
        }
    }
    for s in &m.segments {
        if !is_slug(&s.id, 64) || !seen.insert(("segment", s.id.as_str())) {
            return bad(format!(
                "segment id {:?} is malformed or repeated",
                truncate_for_message(&s.id)
            ));
        }
        if let Some(p) = label_problem(&s.label, MAX_LABEL) {
            return bad(format!("the label of segment {} {p}", s.id));
        }
    }
    for r in &m.reasons {
        if !is_reason_code(&r.code) || !seen.insert(("reason", r.code.as_str())) {
            return bad(format!(
                "reason code {:?} is malformed (1-64 characters of [a-z0-9_.:-]) or repeated",
                truncate_for_message(&r.code)
            ));
        }
        for t in std::iter::once(&r.en).chain(&r.zh) {
            if let Some(p) = text_problem(t, MAX_TEMPLATE) {
                return bad(format!("the text of reason {} {p}", r.code));
            }
        }
    }
    for f in &m.wants_fields {
        if !is_slug(f, 64) {
            return bad(format!(
                "wanted field {:?} is not 1-64 characters of [a-z0-9_-]",
                truncate_for_message(f)
            ));
        }
    }
    if m.default_rules.len() > MAX_DEFAULT_RULES {
        return bad(format!(
            "default rules are {} bytes, at most {MAX_DEFAULT_RULES}",
            m.default_rules.len()
        ));
    }
    if serde_json::from_str::<serde_json::Value>(&m.default_rules).is_err() {
        return bad("default rules are not valid JSON".into());
    }
    Ok(())
}

/// A checked, compiled plugin, ready to instantiate.
pub struct LoadedPlugin {
    pub(super) runtime: Runtime,
    pub(super) digest: String,
    pub(super) size: usize,
    pub(super) component: Component,
    /// Whether the compiled code came from (so is already in) the on-disk cache.
    pub(super) cached: bool,
    /// The contract version the component implements.
    pub(super) version: Version,
    pub(super) pre: Pre,
    pub(super) label: Arc<str>,
    pub(super) manifest: Option<Manifest>,
    pub(super) rules_schema: Option<Arc<schema::RulesSchema>>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("label", &self.label)
            .field("digest", &self.digest)
            .finish()
    }
}

impl LoadedPlugin {
    pub fn manifest(&self) -> &Manifest {
        self.manifest
            .as_ref()
            .expect("manifest is set by Runtime::load")
    }
    /// The contract version the component implements (`0.1.0`, `0.2.0`).
    pub fn contract(&self) -> Version {
        self.version
    }
    /// Hex sha256 of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    pub fn size(&self) -> usize {
        self.size
    }
    /// `name@version`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Writes the compiled code to the on-disk cache (if the runtime has one), so
    /// that a restart does not compile it again. Called by whoever keeps the plugin
    /// (a stored version); a refused upload never gets here and leaves no file.
    pub fn keep_compiled(&self) {
        if self.cached {
            return;
        }
        if let Some(cache) = &self.runtime.inner.cache {
            if let Err(e) = cache.put(&self.digest, &self.component) {
                tracing::warn!("could not cache compiled component {}: {e:#}", self.digest);
            }
        }
    }

    pub(super) fn instantiate(&self, ctx: &CallContext) -> Result<Session<'_>, RuntimeError> {
        let limits = &self.runtime.inner.limits;
        let state = PluginState::new(self.label.clone(), ctx.now, limits.memory_bytes);
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        let mut session = Session {
            plugin: self,
            store,
            bindings: None,
            failed: false,
        };
        let pre = self.pre.clone();
        let bindings = session.run(|st| pre.instantiate(st)).map_err(|e| match e {
            RuntimeError::Trap { plugin, message } => RuntimeError::Trap {
                plugin,
                message: format!("at start: {message}"),
            },
            other => other,
        });
        session.bindings = Some(bindings?);
        Ok(session)
    }

    /// A fresh instance configured with `rules` (the manifest's defaults if `None`).
    /// Use one session for one batch or one event.
    pub fn session(
        &self,
        ctx: &CallContext,
        rules: Option<&str>,
    ) -> Result<Session<'_>, RuntimeError> {
        let mut s = self.instantiate(ctx)?;
        let rules = rules.unwrap_or(&self.manifest().default_rules).to_string();
        let configured = s.guarded(|b, st| b.configure(st, &rules))?;
        configured.map_err(|e| s.plugin_error(e))?;
        Ok(s)
    }

    /// Checks a rule set against the plugin's rules schema, if it declares one;
    /// the error lists where it does not fit.
    pub fn check_rules_schema(&self, rules: &serde_json::Value) -> Result<(), String> {
        match &self.rules_schema {
            Some(schema) => schema.check(rules),
            None => Ok(()),
        }
    }

    /// Checks a rule set by configuring a fresh instance with it.
    pub fn check_rules(&self, rules: &str) -> Result<(), RuntimeError> {
        self.session(
            &CallContext {
                now: 0,
                tenant: String::new(),
            },
            Some(rules),
        )
        .map(|_| ())
    }
}
