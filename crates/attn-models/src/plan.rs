//! Which attention method runs in which (layer, head): a value handed to a model, never a flag
//! inside it.
//!
//! A plan has a default choice and overrides for single layers or single (layer, head) pairs;
//! the most specific entry wins. Plans are files (`attn eval --plan plan.json`): JSON with a
//! `version`, named fields, and an optional `score` beside each choice (what the planner measured
//! when it picked it).
//!
//! ```json
//! { "version": 1,
//!   "default": { "method": "exact" },
//!   "overrides": [ { "layer": 3, "head": 1, "method": "sdpa-reference", "score": { "recall": 0.99 } } ] }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The plan file format version this crate writes and reads.
pub const PLAN_VERSION: u32 = 1;

/// The name that means "exact attention, fastest exact implementation for the shape".
pub const EXACT: &str = "exact";

/// One method with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Choice {
    /// A registered method name, or [`EXACT`].
    pub method: String,
    /// Method parameters (`key → value`), as the method's documentation names them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

impl Choice {
    /// Exact attention.
    pub fn exact() -> Self {
        Self { method: EXACT.into(), params: BTreeMap::new() }
    }

    /// A method by name, default parameters.
    pub fn method(name: &str) -> Self {
        Self { method: name.into(), params: BTreeMap::new() }
    }

    /// Parses `name` or `name:key=value,key=value`.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for an empty name or a parameter without `=`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let name = name.trim();
        if name.is_empty() {
            return Err(ModelError::Invalid(format!("method spec `{spec}` has no name")));
        }
        let mut params = BTreeMap::new();
        for kv in rest.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                ModelError::Invalid(format!("method spec `{spec}`: `{kv}` is not key=value"))
            })?;
            params.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(Self { method: name.to_string(), params })
    }

    /// True for [`EXACT`].
    pub fn is_exact(&self) -> bool {
        self.method == EXACT
    }

    /// `name` or `name:k=v,…`, the inverse of [`Choice::parse`].
    pub fn label(&self) -> String {
        if self.params.is_empty() {
            self.method.clone()
        } else {
            let kv: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}:{}", self.method, kv.join(","))
        }
    }
}

/// An override of the default for one layer (all heads) or one (layer, head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    /// Layer index (0-based).
    pub layer: usize,
    /// Query head index (0-based); absent = every head of the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<usize>,
    /// The choice.
    #[serde(flatten)]
    pub choice: Choice,
    /// What the planner measured for this choice (free-form numbers: recall, error, cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<BTreeMap<String, f64>>,
}

/// Which method runs in which (layer, head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionPlan {
    /// File format version ([`PLAN_VERSION`]).
    pub version: u32,
    /// The choice wherever no override applies.
    pub default: Choice,
    /// Layer and head overrides; a (layer, head) entry beats a layer entry.
    #[serde(default)]
    pub overrides: Vec<Override>,
}

impl Default for AttentionPlan {
    fn default() -> Self {
        Self::exact()
    }
}

impl AttentionPlan {
    /// Exact attention everywhere.
    pub fn exact() -> Self {
        Self::uniform(Choice::exact())
    }

    /// One choice everywhere.
    pub fn uniform(choice: Choice) -> Self {
        Self { version: PLAN_VERSION, default: choice, overrides: Vec::new() }
    }

    /// The choice for (layer, head).
    pub fn choice(&self, layer: usize, head: usize) -> &Choice {
        let mut layer_wide = None;
        for o in &self.overrides {
            if o.layer == layer {
                match o.head {
                    Some(h) if h == head => return &o.choice,
                    None => layer_wide = Some(&o.choice),
                    _ => {}
                }
            }
        }
        layer_wide.unwrap_or(&self.default)
    }

    /// True when every head uses exact attention.
    pub fn is_exact(&self) -> bool {
        self.default.is_exact() && self.overrides.iter().all(|o| o.choice.is_exact())
    }

    /// The layers (of `layers`, each with `heads` query heads) where some head runs a method
    /// other than exact, in order.
    pub fn changed_layers(&self, layers: usize, heads: usize) -> Vec<usize> {
        (0..layers).filter(|&l| (0..heads).any(|h| !self.choice(l, h).is_exact())).collect()
    }

    /// A short description: the default, and how many overrides.
    pub fn label(&self) -> String {
        if self.overrides.is_empty() {
            self.default.label()
        } else {
            format!("{} (+{} overrides)", self.default.label(), self.overrides.len())
        }
    }

    /// Checks the plan against a model's shape.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for a layer or head out of range or a wrong version.
    pub fn validate(&self, layers: usize, heads: usize) -> Result<()> {
        if self.version != PLAN_VERSION {
            return Err(ModelError::Invalid(format!(
                "plan version {} (this build reads version {PLAN_VERSION})",
                self.version
            )));
        }
        for o in &self.overrides {
            if o.layer >= layers || o.head.is_some_and(|h| h >= heads) {
                return Err(ModelError::Invalid(format!(
                    "plan override for layer {} head {:?} but the model has {layers} layers of {heads} heads",
                    o.layer, o.head
                )));
            }
        }
        Ok(())
    }

    /// Reads a plan file.
    ///
    /// # Errors
    /// [`ModelError::Io`] or [`ModelError::Malformed`] naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let plan: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::malformed(path, "plan JSON", e.to_string()))?;
        if plan.version != PLAN_VERSION {
            return Err(ModelError::malformed(
                path,
                "plan JSON",
                format!("version {} (this build reads {PLAN_VERSION})", plan.version),
            ));
        }
        Ok(plan)
    }

    /// Writes the plan as pretty JSON.
    ///
    /// # Errors
    /// [`ModelError::Io`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text =
            serde_json::to_string_pretty(self).map_err(|e| ModelError::Invalid(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_entry_wins() {
        let mut p = AttentionPlan::exact();
        p.overrides.push(Override {
            layer: 2,
            head: None,
            choice: Choice::method("a"),
            score: None,
        });
        p.overrides.push(Override {
            layer: 2,
            head: Some(1),
            choice: Choice::method("b"),
            score: None,
        });
        assert_eq!(p.choice(0, 0).method, EXACT);
        assert_eq!(p.choice(2, 0).method, "a");
        assert_eq!(p.choice(2, 1).method, "b");
        assert!(!p.is_exact());
        assert_eq!(p.changed_layers(3, 2), vec![2]);
        // Exact overrides on every head of layer 2 change nothing.
        let mut q = AttentionPlan::exact();
        for h in 0..2 {
            q.overrides.push(Override {
                layer: 2,
                head: Some(h),
                choice: Choice::exact(),
                score: None,
            });
        }
        assert!(q.changed_layers(3, 2).is_empty());
        assert_eq!(AttentionPlan::uniform(Choice::method("a")).changed_layers(3, 2), vec![0, 1, 2]);
        assert!(AttentionPlan::exact().changed_layers(3, 2).is_empty());
        assert!(p.validate(3, 2).is_ok());
        assert!(p.validate(2, 2).is_err());
    }

    #[test]
    fn parses_specs_and_round_trips_files() {
        let c = Choice::parse("streaming:sink=4, window=64").unwrap();
        assert_eq!(c.method, "streaming");
        assert_eq!(c.params["window"], "64");
        assert_eq!(Choice::parse(&c.label()).unwrap(), c);
        assert!(Choice::parse(":x=1").is_err());
        assert!(Choice::parse("m:x").is_err());
        let mut p = AttentionPlan::uniform(c);
        p.overrides.push(Override {
            layer: 1,
            head: Some(0),
            choice: Choice::exact(),
            score: Some([("recall".to_string(), 0.97)].into()),
        });
        let dir = std::env::temp_dir().join(format!("attn-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("plan.json");
        p.save(&f).unwrap();
        assert_eq!(AttentionPlan::load(&f).unwrap(), p);
        std::fs::write(&f, r#"{"version": 9, "default": {"method": "exact"}}"#).unwrap();
        assert!(matches!(AttentionPlan::load(&f), Err(ModelError::Malformed { .. })));
        std::fs::write(&f, "{").unwrap();
        assert!(matches!(AttentionPlan::load(&f), Err(ModelError::Malformed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
