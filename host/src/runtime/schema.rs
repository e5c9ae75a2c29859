//! The JSON Schema a plugin declares for its rule sets, checked and compiled once
//! when the plugin is loaded, so that a schema the host cannot use safely is
//! refused at upload instead of breaking every later rule set.
//!
//! What is refused, and why:
//! - more than [`MAX_RULES_SCHEMA`] bytes, or a document that is not a JSON Schema
//!   (checked against its draft's meta-schema: `{"type": 12}` is not one);
//! - a `$ref` that is not a local JSON pointer (`#` or `#/...`) or does not
//!   resolve, and `$dynamicRef`/`$recursiveRef`: nothing is fetched, ever;
//! - **recursion**: a `$ref` whose target contains, directly or through further
//!   `$ref`s, a way back to itself. A cycle `a → b → a` made the validator's
//!   compiler allocate without end (the whole server was killed for memory); rule
//!   sets are configuration and never need a recursive shape.
//!
//! `pattern` and `patternProperties` run on the `regex` crate, whose matching time
//! is linear in the input (no backtracking), with a bound on each compiled regex.

use super::budget::MAX_RULES_SCHEMA;
use serde_json::Value as Json;

/// Bytes a compiled `pattern` may take (the regex crate's own size limit).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Bytes of the lazy DFA's transition cache per regex.
const REGEX_DFA_LIMIT: usize = 1 << 20;
/// Errors listed when a rule set does not fit.
const MAX_ERRORS: usize = 10;

/// A checked, compiled rule-set schema.
pub struct RulesSchema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for RulesSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RulesSchema")
    }
}

impl RulesSchema {
    /// Checks and compiles a schema; the error says what is wrong with it.
    pub fn compile(text: &str) -> Result<RulesSchema, String> {
        if text.len() > MAX_RULES_SCHEMA {
            return Err(format!(
                "the rules schema is {} bytes, at most {MAX_RULES_SCHEMA}",
                text.len()
            ));
        }
        let schema: Json =
            serde_json::from_str(text).map_err(|e| format!("the rules schema is not JSON: {e}"))?;
        if !(schema.is_object() || schema.is_boolean()) {
            return Err("the rules schema must be a JSON object (a JSON Schema)".into());
        }
        check_refs(&schema)?;
        match jsonschema::meta::try_validate(&schema) {
            Err(e) => return Err(format!("the rules schema names no known draft: {e}")),
            Ok(Err(e)) => {
                let at = e.instance_path.to_string();
                return Err(format!(
                    "the rules schema is not a valid JSON Schema{}: {e}",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!(" at {at}")
                    }
                ));
            }
            Ok(Ok(())) => {}
        }
        let validator = jsonschema::options()
            .with_pattern_options(
                jsonschema::PatternOptions::regex()
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_DFA_LIMIT),
            )
            .build(&schema)
            .map_err(|e| format!("the rules schema cannot be used: {e}"))?;
        Ok(RulesSchema { validator })
    }

    /// Checks a rule set; the error lists up to ten places where it does not fit.
    pub fn check(&self, rules: &Json) -> Result<(), String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(rules)
            .take(MAX_ERRORS)
            .map(|e| {
                let at = e.instance_path.to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// A `$ref` found in the schema: where it stands and the pointer it targets.
struct Ref {
    at: String,
    target: String,
}

/// Refuses non-local, unresolvable and recursive references (see the module doc).
fn check_refs(schema: &Json) -> Result<(), String> {
    let mut refs = Vec::new();
    collect_refs(schema, &mut String::new(), &mut refs)?;
    for r in &refs {
        if schema.pointer(&r.target).is_none() {
            return Err(format!(
                "$ref \"#{}\" at {} does not resolve",
                r.target,
                shown(&r.at)
            ));
        }
    }
    // A ref leads to another when the other stands inside its target. A cycle in
    // that graph is a schema that refers back into itself.
    let inside = |at: &str, target: &str| {
        at == target
            || (at.starts_with(target) && at.as_bytes().get(target.len()) == Some(&b'/'))
            || target.is_empty()
    };
    // 0 unvisited, 1 on the current path, 2 done.
    let mut state = vec![0u8; refs.len()];
    fn visit(
        i: usize,
        refs: &[Ref],
        state: &mut [u8],
        inside: &dyn Fn(&str, &str) -> bool,
    ) -> Option<usize> {
        state[i] = 1;
        for j in 0..refs.len() {
            if !inside(&refs[j].at, &refs[i].target) {
                continue;
            }
            match state[j] {
                1 => return Some(j),
                0 => {
                    if let Some(c) = visit(j, refs, state, inside) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        state[i] = 2;
        None
    }
    for i in 0..refs.len() {
        if state[i] == 0 {
            if let Some(j) = visit(i, &refs, &mut state, &inside) {
                return Err(format!(
                    "the rules schema is recursive: $ref \"#{}\" at {} leads back to itself \
                     ($ref cycles are refused)",
                    refs[j].target,
                    shown(&refs[j].at)
                ));
            }
        }
    }
    Ok(())
}

fn shown(pointer: &str) -> &str {
    if pointer.is_empty() {
        "the root"
    } else {
        pointer
    }
}

fn collect_refs(v: &Json, at: &mut String, out: &mut Vec<Ref>) -> Result<(), String> {
    match v {
        Json::Object(o) => {
            for key in ["$dynamicRef", "$recursiveRef"] {
                if o.get(key).is_some_and(Json::is_string) {
                    return Err(format!("{key} at {} is not supported", shown(at)));
                }
            }
            // A `$ref` whose value is not a string is a property named "$ref".
            if let Some(Json::String(r)) = o.get("$ref") {
                let target = match r.strip_prefix('#') {
                    Some(t) if t.is_empty() || t.starts_with('/') => t,
                    _ => {
                        return Err(format!(
                            "$ref {r:?} at {}: only local references (\"#/...\") are supported",
                            shown(at)
                        ))
                    }
                };
                out.push(Ref {
                    at: at.clone(),
                    target: percent_decode(target),
                });
            }
            for (k, child) in o {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                collect_refs(child, at, out)?;
                at.truncate(len);
            }
        }
        Json::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                collect_refs(child, at, out)?;
                at.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// A URI fragment's `%XX` escapes decoded (a JSON pointer in a `$ref` is a fragment).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(schema: Json, words: &str) {
        match RulesSchema::compile(&schema.to_string()) {
            Err(e) => assert!(e.contains(words), "{e}"),
            Ok(_) => panic!("accepted {schema}"),
        }
    }

    #[test]
    fn a_usable_schema_checks_rule_sets() {
        let s = RulesSchema::compile(
            &json!({
                "type": "object",
                "properties": {
                    "tiers": {"type": "array", "items": {"$ref": "#/$defs/tier"}},
                    "code": {"type": "string", "pattern": "^[a-z]+$"}
                },
                "$defs": {"tier": {"type": "object", "required": ["min"]}}
            })
            .to_string(),
        )
        .unwrap();
        assert!(s
            .check(&json!({"tiers": [{"min": 1}], "code": "abc"}))
            .is_ok());
        let e = s.check(&json!({"tiers": [{}], "code": "ABC"})).unwrap_err();
        assert!(e.contains("/tiers/0") && e.contains("/code"), "{e}");
    }

    #[test]
    fn cycles_and_recursion_are_refused() {
        refused(
            json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
            "recursive",
        );
        refused(
            json!({"type": "object", "properties": {"child": {"$ref": "#"}}}),
            "recursive",
        );
        refused(
            json!({"$defs": {"a": {"items": {"$ref": "#/$defs/a"}}}}),
            "recursive",
        );
    }

    #[test]
    fn what_is_not_a_usable_schema_is_refused() {
        refused(json!({"type": 12}), "not a valid JSON Schema");
        refused(json!(12), "must be a JSON object");
        refused(json!({"$ref": "https://example.com/s.json"}), "only local");
        refused(json!({"$ref": "#/$defs/missing"}), "does not resolve");
        refused(json!({"$dynamicRef": "#meta"}), "not supported");
        let huge = json!({"description": "x".repeat(MAX_RULES_SCHEMA)});
        refused(huge, "at most");
    }

    #[test]
    fn patterns_do_not_backtrack() {
        // Catastrophic for a backtracking engine: (a+)+$ against "aaaa…b".
        let s = RulesSchema::compile(&json!({"type": "string", "pattern": "^(a+)+$"}).to_string())
            .unwrap();
        // A backtracking engine would not finish this within the test run at all.
        let input = json!(format!("{}b", "a".repeat(100_000)));
        assert!(s.check(&input).is_err());
        // Lookaround is a backtracking feature: refused at compile.
        assert!(RulesSchema::compile(&json!({"pattern": "(?=a)a"}).to_string()).is_err());
    }
}
