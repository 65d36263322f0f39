//! A small JSON Schema checker for the subset docs/ls.schema.json uses (type, enum, required,
//! properties, additionalProperties, minimum, maximum, allOf, if/then, local $ref), so the
//! tests validate `ls --json` output against the schema file itself rather than a copy of it.
//! Used by tests/ls_cat_extract.rs and by the unit tests in src/commands/ls.rs.
#![allow(dead_code)]

use serde_json::Value;

/// The schema file's text.
pub fn ls_schema() -> Value {
    let text = include_str!("../../docs/ls.schema.json");
    serde_json::from_str(text).expect("docs/ls.schema.json is valid JSON")
}

/// Every violation of `schema` by `v`, as "<json pointer>: <what>"; empty when valid.
pub fn validate(schema: &Value, v: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    check(schema, schema, v, "", &mut errs);
    errs
}

fn check(root: &Value, s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let Some(s) = s.as_object() else {
        if s == &Value::Bool(false) {
            errs.push(format!("{at}: not allowed"));
        }
        return;
    };
    for key in s.keys() {
        let known = [
            "$schema",
            "$id",
            "title",
            "description",
            "type",
            "enum",
            "required",
            "properties",
            "additionalProperties",
            "minimum",
            "maximum",
            "allOf",
            "if",
            "then",
            "$ref",
            "$defs",
        ];
        assert!(
            known.contains(&key.as_str()),
            "schema keyword {key} is not supported by this checker"
        );
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let path = r.strip_prefix('#').expect("only local $ref");
        let target = root.pointer(path).unwrap_or_else(|| panic!("bad $ref {r}"));
        check(root, target, v, at, errs);
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "array" => v.is_array(),
            "boolean" => v.is_boolean(),
            other => panic!("type {other} not supported"),
        };
        if !ok {
            errs.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} not one of {e:?}"));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errs.push(format!("{at}: {v} < {min}"));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errs.push(format!("{at}: {v} > {max}"));
            }
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for r in req {
                let r = r.as_str().expect("required names are strings");
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: missing {r}"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            let sub = format!("{at}/{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(root, ps, val, &sub, errs),
                None => {
                    if let Some(ap) = s.get("additionalProperties") {
                        check(root, ap, val, &sub, errs);
                    }
                }
            }
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            check(root, sub, v, at, errs);
        }
    }
    if let Some(cond) = s.get("if") {
        let mut e = Vec::new();
        check(root, cond, v, at, &mut e);
        if e.is_empty() {
            if let Some(then) = s.get("then") {
                check(root, then, v, at, errs);
            }
        }
    }
}
