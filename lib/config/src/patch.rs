//! Configuration patches: a YAML strategic merge, or an RFC 6902 JSON Patch.

use serde_norway::{Mapping, Value};

use crate::error::{ConfigError, FieldError};

/// Keys that identify the items of a list of mappings, in the order they are
/// tried: `interface` (interfaces), `vlanId` (VLANs), `name` (workloads), `ip`
/// (extra hosts).
const MERGE_KEYS: &[&str] = &["interface", "vlanId", "name", "ip"];

/// The directive key in a strategic-merge patch.
const DIRECTIVE: &str = "$patch";

/// Applies `patch_yaml` to the configuration document `base_yaml` and returns
/// the patched document. The result is not validated: pass it to
/// [`crate::MachineConfig::parse`].
///
/// Two kinds of patch are accepted.
///
/// **Strategic merge** (a YAML mapping, the default):
/// - mappings merge key by key, recursively; scalars replace;
/// - a list whose items (in the base and in the patch) are all mappings
///   carrying the same merge key — the first of `interface`, `vlanId`, `name`,
///   `ip` they all have — merges item by item by that key's value: a matching
///   item merges recursively, a new one is appended;
/// - any other list replaces the old one;
/// - `$patch: delete` as an item of a keyed list (`{interface: eth1, $patch:
///   delete}`) removes that item; as the whole value of a key
///   (`kubelet: {$patch: delete}`) removes the key; `$patch: replace` in a
///   mapping makes the rest of that mapping replace the old one instead of
///   merging into it.
///
/// **JSON Patch** (RFC 6902; a YAML or JSON list of operations): `add`,
/// `remove` and `replace` with a JSON Pointer `path` (`/machine/hostname`,
/// `/machine/network/interfaces/0`, `-` to append to a list) and a `value`
/// for `add` and `replace`. `move`, `copy` and `test` are not supported.
pub fn apply_patch(base_yaml: &str, patch_yaml: &str) -> Result<String, ConfigError> {
    let mut base: Value = serde_norway::from_str(base_yaml)
        .map_err(|e| ConfigError::single("", format!("base configuration: invalid YAML: {e}")))?;
    let patch: Value = serde_norway::from_str(patch_yaml)
        .map_err(|e| ConfigError::single("", format!("patch: invalid YAML: {e}")))?;
    match patch {
        Value::Mapping(_) => {
            base = merge(Some(base), patch, "")
                .map_err(|e| ConfigError::new(vec![e]))?
                .unwrap_or(Value::Null);
        }
        Value::Sequence(ops) => json_patch(&mut base, ops)?,
        Value::Null => {}
        _ => {
            return Err(ConfigError::single(
                "",
                "patch: expected a YAML mapping (strategic merge) or a list of \
                 JSON Patch operations",
            ));
        }
    }
    serde_norway::to_string(&base)
        .map_err(|e| ConfigError::single("", format!("cannot write the patched document: {e}")))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "?".to_owned(),
    }
}

/// What a mapping's `$patch` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Merge,
    Delete,
    Replace,
}

/// Removes and reads the `$patch` key of `map`.
fn take_directive(map: &mut Mapping, path: &str) -> Result<Directive, FieldError> {
    match map.shift_remove(DIRECTIVE) {
        None => Ok(Directive::Merge),
        Some(Value::String(s)) if s == "delete" => Ok(Directive::Delete),
        Some(Value::String(s)) if s == "replace" => Ok(Directive::Replace),
        Some(other) => Err(FieldError::new(
            join(path, DIRECTIVE),
            format!(
                "unknown directive {}; use `delete` or `replace`",
                crate::scalar_text(&other)
            ),
        )),
    }
}

/// Merges `patch` into `base`; `None` means "remove this value".
fn merge(base: Option<Value>, patch: Value, path: &str) -> Result<Option<Value>, FieldError> {
    match patch {
        Value::Mapping(mut pmap) => match take_directive(&mut pmap, path)? {
            Directive::Delete => Ok(None),
            Directive::Replace => Ok(Some(Value::Mapping(strip(pmap, path)?))),
            Directive::Merge => match base {
                Some(Value::Mapping(mut bmap)) => {
                    for (k, v) in pmap {
                        let child = join(path, &key_text(&k));
                        let old = bmap.get(&k).cloned();
                        match merge(old, v, &child)? {
                            Some(new) => {
                                if let Some(slot) = bmap.get_mut(&k) {
                                    *slot = new;
                                } else {
                                    bmap.insert(k, new);
                                }
                            }
                            None => {
                                bmap.shift_remove(&k);
                            }
                        }
                    }
                    Ok(Some(Value::Mapping(bmap)))
                }
                _ => Ok(Some(Value::Mapping(strip(pmap, path)?))),
            },
        },
        Value::Sequence(pseq) => match base {
            Some(Value::Sequence(bseq)) => match merge_key(&bseq, &pseq) {
                Some(key) => merge_keyed(bseq, pseq, key, path).map(Some),
                None => strip_seq(pseq, path).map(|s| Some(Value::Sequence(s))),
            },
            _ => strip_seq(pseq, path).map(|s| Some(Value::Sequence(s))),
        },
        scalar => Ok(Some(scalar)),
    }
}

/// The merge key every item of both lists carries, if any.
fn merge_key(base: &[Value], patch: &[Value]) -> Option<&'static str> {
    if patch.is_empty() {
        return None;
    }
    MERGE_KEYS.iter().copied().find(|key| {
        base.iter()
            .chain(patch)
            .all(|item| item.as_mapping().is_some_and(|m| m.contains_key(*key)))
    })
}

fn merge_keyed(
    mut base: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
    path: &str,
) -> Result<Value, FieldError> {
    for item in patch {
        let Value::Mapping(mut pmap) = item else {
            // merge_key() only picks a key when every item is a mapping.
            continue;
        };
        let id = pmap.get(key).cloned().unwrap_or(Value::Null);
        let found = base
            .iter()
            .position(|b| b.as_mapping().and_then(|m| m.get(key)) == Some(&id));
        let item_path = format!("{path}[{}]", found.unwrap_or(base.len()));
        match take_directive(&mut pmap, &item_path)? {
            Directive::Delete => {
                if let Some(i) = found {
                    base.remove(i);
                }
            }
            Directive::Replace => {
                let new = Value::Mapping(strip(pmap, &item_path)?);
                match found {
                    Some(i) => base[i] = new,
                    None => base.push(new),
                }
            }
            Directive::Merge => match found {
                Some(i) => {
                    let old = std::mem::take(&mut base[i]);
                    if let Some(new) = merge(Some(old), Value::Mapping(pmap), &item_path)? {
                        base[i] = new;
                    }
                }
                None => base.push(Value::Mapping(strip(pmap, &item_path)?)),
            },
        }
    }
    Ok(Value::Sequence(base))
}

/// A patch mapping used as a plain value: directives are resolved against
/// nothing (deleted keys vanish, `replace` is a no-op).
fn strip(map: Mapping, path: &str) -> Result<Mapping, FieldError> {
    let mut out = Mapping::new();
    for (k, v) in map {
        let child = join(path, &key_text(&k));
        if let Some(v) = merge(None, v, &child)? {
            out.insert(k, v);
        }
    }
    Ok(out)
}

fn strip_seq(seq: Vec<Value>, path: &str) -> Result<Vec<Value>, FieldError> {
    let mut out = Vec::with_capacity(seq.len());
    for (i, item) in seq.into_iter().enumerate() {
        if let Some(v) = merge(None, item, &format!("{path}[{i}]"))? {
            out.push(v);
        }
    }
    Ok(out)
}

// ---- JSON Patch ----------------------------------------------------------

fn json_patch(doc: &mut Value, ops: Vec<Value>) -> Result<(), ConfigError> {
    for (i, op) in ops.into_iter().enumerate() {
        apply_op(doc, op, i).map_err(|e| ConfigError::new(vec![e]))?;
    }
    Ok(())
}

fn apply_op(doc: &mut Value, op: Value, index: usize) -> Result<(), FieldError> {
    let at = |field: &str| format!("[{index}].{field}");
    let Value::Mapping(mut op) = op else {
        return Err(FieldError::new(
            format!("[{index}]"),
            "a JSON Patch operation must be a mapping with `op` and `path`",
        ));
    };
    let name = match op.get("op") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(FieldError::new(
                at("op"),
                "missing; use add, remove or replace",
            ));
        }
    };
    let pointer = match op.get("path") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(FieldError::new(
                at("path"),
                "missing; give a JSON Pointer such as /machine/hostname",
            ));
        }
    };
    let tokens = parse_pointer(&pointer).map_err(|m| FieldError::new(at("path"), m))?;
    let value = op.shift_remove("value");
    let need_value = |v: Option<Value>| {
        v.ok_or_else(|| FieldError::new(at("value"), format!("missing; `{name}` needs a value")))
    };
    let result = match name.as_str() {
        "add" => {
            let value = need_value(value)?;
            add(doc, &tokens, value)
        }
        "replace" => {
            let value = need_value(value)?;
            lookup_mut(doc, &tokens).map(|slot| *slot = value)
        }
        "remove" => remove(doc, &tokens),
        other => {
            return Err(FieldError::new(
                at("op"),
                format!("unsupported operation {other:?}; use add, remove or replace"),
            ));
        }
    };
    result.map_err(|m| FieldError::new(at("path"), format!("{pointer:?}: {m}")))
}

fn parse_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "{pointer:?} is not a JSON Pointer: it must start with '/'"
        ));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index_of(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    let i: usize = token
        .parse()
        .map_err(|_| format!("{token:?} is not a list index"))?;
    if (token.len() > 1 && token.starts_with('0')) || token.starts_with('+') {
        return Err(format!("{token:?} is not a list index"));
    }
    if i < len || (allow_end && i == len) {
        Ok(i)
    } else {
        Err(format!("index {i} is past the end of a list of {len}"))
    }
}

fn step<'a>(value: &'a mut Value, token: &str) -> Result<&'a mut Value, String> {
    match value {
        Value::Mapping(map) => map
            .get_mut(token)
            .ok_or_else(|| format!("no key {token:?}")),
        Value::Sequence(seq) => {
            let i = index_of(token, seq.len(), false)?;
            Ok(&mut seq[i])
        }
        _ => Err(format!("cannot descend into a scalar at {token:?}")),
    }
}

fn lookup_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    tokens.iter().try_fold(doc, |v, t| step(v, t))
}

fn add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match lookup_mut(doc, parents)? {
        Value::Mapping(map) => {
            if let Some(slot) = map.get_mut(last.as_str()) {
                *slot = value;
            } else {
                map.insert(Value::String(last.clone()), value);
            }
            Ok(())
        }
        Value::Sequence(seq) => {
            let i = if last == "-" {
                seq.len()
            } else {
                index_of(last, seq.len(), true)?
            };
            seq.insert(i, value);
            Ok(())
        }
        _ => Err("the parent is a scalar".to_owned()),
    }
}

fn remove(doc: &mut Value, tokens: &[String]) -> Result<(), String> {
    let Some((last, parents)) = tokens.split_last() else {
        return Err("cannot remove the whole document".to_owned());
    };
    match lookup_mut(doc, parents)? {
        Value::Mapping(map) => map
            .shift_remove(last.as_str())
            .map(|_| ())
            .ok_or_else(|| format!("no key {last:?}")),
        Value::Sequence(seq) => {
            let i = index_of(last, seq.len(), false)?;
            seq.remove(i);
            Ok(())
        }
        _ => Err("the parent is a scalar".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> Value {
        serde_norway::from_str(s).unwrap()
    }

    #[test]
    fn merge_key_needs_every_item() {
        let a = val("[{name: a}, {name: b}]");
        let b = val("[{name: c}]");
        let c = val("[{other: c}]");
        let (Value::Sequence(a), Value::Sequence(b), Value::Sequence(c)) = (a, b, c) else {
            panic!("lists");
        };
        assert_eq!(merge_key(&a, &b), Some("name"));
        assert_eq!(merge_key(&a, &c), None);
        assert_eq!(merge_key(&a, &[]), None);
    }

    #[test]
    fn pointers_unescape() {
        assert_eq!(parse_pointer("/a~1b/c~0d").unwrap(), vec!["a/b", "c~d"]);
        assert!(parse_pointer("a").is_err());
        assert!(parse_pointer("").unwrap().is_empty());
    }

    #[test]
    fn unknown_directive_is_refused() {
        let err = apply_patch("a: {b: 1}", "a: {$patch: merge}").unwrap_err();
        assert_eq!(err.errors()[0].path, "a.$patch");
        assert!(err.errors()[0].message.contains("unknown directive"));
    }
}
